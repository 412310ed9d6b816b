"""Serve the HIRPF app: `python app.py [--host H] [--port P] [--base_model M] [--lora_weights DIR|none]
[--load_in_8bit] [--data_dir DIR] [--annotation_only] [--no-scheduler] [--no-engine_process]` (each flag also
reads an environment variable; see app/launch_options.py and docs/configuration.md).

Hugging Face Spaces runs this file and expects the Blocks at module level as `demo` (`built` is the whole
`BuiltApp`: the Blocks with its stylesheet, admin routes and model slot). The page is built and served
before torch and transformers are imported: the model (and they) load in a background thread once the page
answers, and the first reply waits for that load while the page's status line says so. With
`--annotation_only` (or `HIRPF_ANNOTATION_ONLY=1`) no model is loaded at all: the page is the human
evaluation alone.
"""
import sys

from app.launch_options import launch_options

settings = launch_options(sys.argv[1:] if __name__ == "__main__" else [])

if settings.annotation_only:
    from app.build import build_annotation_app
    from app.launching import launch

    built = build_annotation_app(data_dir=settings.data_dir)
else:
    from app.model_slot import ModelSlot  # light; torch is imported by the loader thread

    def load_engine():
        from hirpf.engine import Engine
        from hirpf.serving_threads import use_serving_threads

        use_serving_threads()
        engine = Engine.load(settings.base_model, lora_weights=settings.lora_weights,
                             load_in_8bit=settings.load_in_8bit)
        engine.serve_in_a_process(settings.engine_process)
        return engine

    experts = {"default": "the shipped experts", None: "no experts"}.get(settings.lora_weights,
                                                                          settings.lora_weights)
    slot = ModelSlot(load_engine, description=f"{settings.base_model} model with {experts}")

    from app.build import build_app  # imports no torch (tests/test_app_startup.py)
    from app.launching import launch

    built = build_app(slot, data_dir=settings.data_dir, scheduler=settings.scheduler)
demo = built.blocks

if __name__ == "__main__":
    launch(built, settings.host, settings.port, prevent_thread_lock=True)
    if not settings.annotation_only:
        slot.start()  # now that the page answers: loading torch sooner would slow the page's own imports
    demo.block_thread()
