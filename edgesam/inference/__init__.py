from .predictor import Prediction, Predictor, as_rgb_uint8
