"""Network architectures: the classifiers (:mod:`.architectures`) and denoisers smoothcert trains.

Model files (``model.safetensors`` + ``model.json``) are read and written by :mod:`smoothcert.io.checkpoints`.
"""
