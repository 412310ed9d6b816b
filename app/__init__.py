"""The HIRPF Gradio app: one module per tab, the shared identity panel, and `build.build_app`.

Kept free of imports on purpose: `app.py` starts loading the model (torch, transformers) in a background
thread before Gradio is imported, and importing this package must not pull either in first.
"""
