"""The chapter's MNIST convolutional network, shared by every script.

``model`` builds it on top of any Lasagne layer: the 1-train-mnist.py classifier,
the localization network of the spatial transformer (``num_classes=0``) and the
convolutional trunk of the recurrent one (``num_units=0``).
"""
import stn  # noqa: F401  (sets Theano up before Lasagne loads)
import lasagne
from lasagne.layers import Conv2DLayer, DenseLayer, MaxPool2DLayer, dropout
from lasagne.nonlinearities import rectify, softmax


def model(l_input, input_dim=28, num_units=256, num_classes=10, p=.5):
    """Conv 32 5x5 -> pool 2x2 -> conv 32 5x5 -> pool 2x2 [-> dense] [-> softmax].

    Parameters
    ----------
    l_input : lasagne Layer
        Images, (batch, 1, rows, cols).
    input_dim : int
        The side of the images, kept for the chapter's signature; the layer
        shapes follow ``l_input``.
    num_units : int
        Units of the hidden dense layer (ReLU); 0 stops after the second pool.
    num_classes : int
        Units of the softmax output; 0 stops after the hidden dense layer.
    p : float or Theano shared variable
        Dropout probability before each dense layer.

    Returns
    -------
    The last layer.
    """
    network = Conv2DLayer(l_input, num_filters=32, filter_size=(5, 5),
                          nonlinearity=rectify, W=lasagne.init.GlorotUniform())
    network = MaxPool2DLayer(network, pool_size=(2, 2))
    network = Conv2DLayer(network, num_filters=32, filter_size=(5, 5),
                          nonlinearity=rectify, W=lasagne.init.GlorotUniform())
    network = MaxPool2DLayer(network, pool_size=(2, 2))
    if num_units > 0:
        network = DenseLayer(dropout(network, p=p), num_units=num_units,
                             nonlinearity=rectify)
        if num_classes > 0:
            network = DenseLayer(dropout(network, p=p), num_units=num_classes,
                                 nonlinearity=softmax)
    return network
