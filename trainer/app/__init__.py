"""The Hydra app behind the doors: a command's config checked (``validate``), built (``build``)
and run (``run``), and the glue that makes every config error one line (``cli``)."""
