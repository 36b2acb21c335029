"""What a captioning model is made of: encoders (a registry whose entries carry their preprocessing), the decoder
contract, the pooled-vector and attention decoders, the fused attention LSTM, the ensemble module, the one factory
that builds every decoder (:func:`captioner.models.factory.build_decoder`), vocabulary row growth, and the model
directory on disk. Imports only the base modules (config, vocab, images, fileio)."""
