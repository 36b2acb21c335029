"""Looking inside a model: parameter accounting (``captioner inspect``), per-word visualisation (``captioner
visualize``) and training plots (``captioner plot``)."""
