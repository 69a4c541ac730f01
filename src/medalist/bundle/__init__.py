"""Code competitions: the wheels, artifacts and kernel of an offline bundle, and its offline rerun."""
