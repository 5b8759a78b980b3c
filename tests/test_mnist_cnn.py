"""mnist_cnn.model: the layer stack and its shapes for each way the chapter calls it."""
import lasagne
import theano

import mnist_cnn


def shapes(layer):
    return [p.get_value().shape for p in lasagne.layers.get_all_params(layer)]


def test_classifier_shapes():
    net = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 28, 28)))
    assert net.output_shape == (None, 10)
    assert shapes(net) == [(32, 1, 5, 5), (32,), (32, 32, 5, 5), (32,),
                           (512, 256), (256,), (256, 10), (10,)]
    assert net.nonlinearity is lasagne.nonlinearities.softmax


def test_trunk_and_localization_variants():
    trunk = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 50, 50)), num_units=0)
    assert trunk.output_shape == (None, 32, 9, 9)
    loc = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 50, 50)), num_classes=0)
    assert loc.output_shape == (None, 256)
    assert loc.nonlinearity is lasagne.nonlinearities.rectify


def test_dropout_probability_may_be_shared():
    p = theano.shared(lasagne.utils.floatX(0.25))
    net = mnist_cnn.model(lasagne.layers.InputLayer((None, 1, 28, 28)), p=p)
    dropouts = [l for l in lasagne.layers.get_all_layers(net)
                if isinstance(l, lasagne.layers.DropoutLayer)]
    assert len(dropouts) == 2 and all(l.p is p for l in dropouts)
