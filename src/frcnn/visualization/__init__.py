"""Pictures: boxes drawn on images (`drawing`), the look-inside figures (`inspection`) and the
TensorBoard pictures logged while training (`tensorboard`)."""
