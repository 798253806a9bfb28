"""Layer 3: fold validation, its own stage (``medseg validate``).

It predicts a trained fold's validation cases with :mod:`medseg.inference` and
scores them with :mod:`medseg.evaluation`, so that :mod:`medseg.training` needs
neither: the data walks down the house, never up and back.
"""
