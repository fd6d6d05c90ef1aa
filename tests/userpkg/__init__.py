"""A user's own package, as a new user would write it: a model class, a dataset class and a config
dir (``conf/``), trained with ``python -m trainer --config-dir tests/userpkg/conf`` and nothing in
``trainer/`` edited. Imported as ``userpkg`` (its parent on PYTHONPATH), as a user's package would be."""
