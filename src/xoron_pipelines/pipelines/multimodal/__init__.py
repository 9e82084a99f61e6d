"""``multimodal``: image / video / audio understanding stages after the finetune group."""
