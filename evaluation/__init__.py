"""evaluation: measuring generated clips. The triangulation probe (`magvit3d train-probe`), DLT triangulation and
3D trajectory metrics, image metrics of generated vs rendered clips, `magvit3d evaluate` / `compare` and their HTML
reports, and `magvit3d demo` (evaluation/pipeline.py), which runs the whole pipeline stage by stage.

May import datagen and training; nothing imports evaluation but the CLI. See docs/architecture.md.
"""
