"""Many runs of one experiment file: the `sweep:` section (spec.py) and `cnntrain sweep`."""
