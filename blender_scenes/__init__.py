"""blender_scenes: the only bpy code. A scene spec in, rendered files out.

bpy is imported by the submodules, never here, and only inside render worker processes (see worker.py).
"""
