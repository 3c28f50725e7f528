"""Our timm models, one module per timm family, named like timm's own (``resnet``, ``convnext``).

timm files each model under the last component of its entrypoint's module, and its model tests select models by
that name (``list_models(module=...)``), so ours sit in modules named as the families they extend.
"""
