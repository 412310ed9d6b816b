"""Serve the HIRPF app: `python app.py [--host H] [--port P] [--base_model M] [--lora_weights DIR|none]
[--load_in_8bit] [--data_dir DIR] [--annotation_only] [--no-scheduler]` (each flag also reads an environment
variable; see app/launch_options.py and docs/configuration.md).

Hugging Face Spaces runs this file and expects the Blocks at module level as `demo`. The model starts
loading in a background thread before Gradio is even imported, so the page answers within seconds and
the first reply waits only for whatever is left of the load. With `--annotation_only` (or
`HIRPF_ANNOTATION_ONLY=1`) no model is loaded at all: the page is the human evaluation alone.
"""
import sys

from app.launch_options import launch_options

settings = launch_options(sys.argv[1:] if __name__ == "__main__" else [])

if settings.annotation_only:
    from app.build import build_annotation_app
    from app.launching import launch

    demo = build_annotation_app(data_dir=settings.data_dir)
else:
    from app.model_slot import ModelSlot  # light; torch is imported by the loader thread

    def load_engine():
        from hirpf.engine import Engine

        return Engine.load(settings.base_model, lora_weights=settings.lora_weights,
                           load_in_8bit=settings.load_in_8bit)

    experts = {"default": "the shipped experts", None: "no experts"}.get(settings.lora_weights,
                                                                          settings.lora_weights)
    slot = ModelSlot(load_engine, description=f"{settings.base_model} model with {experts}").start()

    from app.build import build_app  # Gradio loads while the model does
    from app.launching import launch

    demo = build_app(slot, data_dir=settings.data_dir, scheduler=settings.scheduler)

if __name__ == "__main__":
    launch(demo, settings.host, settings.port)
