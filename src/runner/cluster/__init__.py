"""runner on Ray Serve: N runner replicas behind one front door, routed by prompt cache.

Optional (`pip install 'runner[cluster]'`); nothing here is imported by `runner serve`, and
importing this package itself does not import Ray (the CLI registrar lives here too).
"""
