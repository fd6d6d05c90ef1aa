"""Parameter groups and the optimizer: which parameters train, at which LR scale and weight decay."""
