"""Local updating at a new centre (make update): the updated bundles, figures and report."""
