"""Code shared by the chapter's scripts, one module per concern.

Importing the package sets Theano and Lasagne up (see ``stn.backend``) without
loading them, so it must come before ``import lasagne`` (in the venv that
``make`` builds, its ``stn.pth`` does that at start-up):

    import stn
    import lasagne
    lasagne.layers.TransformerLayer(...)   # added by stn to Lasagne 0.1
"""
from . import backend

backend.configure()
