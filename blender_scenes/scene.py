"""Build a Blender scene from a scene spec (plain JSON, made by datagen.spec) and render it.

This is the only module that talks to bpy. It takes no decisions of its own: every number (sizes,
colours, light directions, per-frame poses, render settings) comes from the spec.
"""
from __future__ import annotations

import math
import os
import time

import bpy

OBJECT_PASS_INDEX = 1  # the moving object's index in the Object Index pass; everything else is 0
GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")  # preference order for --device auto|gpu
MESH_SEGMENTS = 32
# Multi-view finds each view's camera by suffix: view "view1" renders camera object "cam_view1".
CAMERA_PREFIX, CAMERA_SUFFIX_SEP = "cam", "_"


class RenderSetupError(RuntimeError):
    """A setting the spec asks for cannot be honoured on this machine (e.g. a GPU that isn't there)."""


# --- devices -------------------------------------------------------------------------------------

def select_cycles_device(device: str) -> dict:
    """Point Cycles at the best available compute backend.

    device: 'auto' (GPU when one is found, else CPU with a notice), 'cpu', or 'gpu' (error without one).
    Returns {"device": "CPU" | backend name, "devices": [names], "notice": str | None}.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise RenderSetupError(f"unknown device {device!r}; allowed: auto, cpu, gpu")
    prefs = bpy.context.preferences.addons["cycles"].preferences
    if device != "cpu":
        for backend in GPU_BACKENDS:
            try:
                prefs.compute_device_type = backend
            except TypeError:  # backend not compiled into this build
                continue
            prefs.refresh_devices()
            gpus = [d for d in prefs.devices if d.type == backend]
            if gpus:
                for d in prefs.devices:
                    d.use = d.type == backend
                return {"device": backend, "devices": [d.name for d in gpus], "notice": None}
        if device == "gpu":
            raise RenderSetupError("--device cuda: no GPU found for Cycles (tried OPTIX, CUDA, HIP, ONEAPI, METAL); "
                                   "use --device cpu or auto")
        prefs.compute_device_type = "NONE"
        return {"device": "CPU", "devices": [], "notice": "no GPU found for Cycles; rendering on the CPU"}
    prefs.compute_device_type = "NONE"
    return {"device": "CPU", "devices": [], "notice": None}


# --- scene construction --------------------------------------------------------------------------

def _mesh_vertices_faces(shape: str, dims, bbox_offset=(0.0, 0.0, 0.0)):
    """Vertices and faces of a primitive whose bounding-box centre lies at bbox_offset from the object's origin (the
    spec puts the origin at the centre of mass: datagen.spec.bbox_offset)."""
    verts, faces = _box_centred_vertices_faces(shape, dims)
    ox, oy, oz = bbox_offset
    return [(x + ox, y + oy, z + oz) for x, y, z in verts], faces


def _box_centred_vertices_faces(shape: str, dims):
    sx, sy, sz = (d / 2 for d in dims)
    if shape in ("cube", "square"):  # a square is a flat box
        v = [(x * sx, y * sy, z * sz) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
        f = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
        return v, f
    n = MESH_SEGMENTS
    ring = [(sx * math.cos(2 * math.pi * i / n), sy * math.sin(2 * math.pi * i / n)) for i in range(n)]
    if shape in ("cylinder", "disc"):  # a disc is a flat cylinder
        v = [(x, y, -sz) for x, y in ring] + [(x, y, sz) for x, y in ring]
        f = [(i, (i + 1) % n, n + (i + 1) % n, n + i) for i in range(n)]
        f += [tuple(reversed(range(n))), tuple(range(n, 2 * n))]
        return v, f
    if shape == "cone":
        v = [(x, y, -sz) for x, y in ring] + [(0.0, 0.0, sz)]
        f = [(i, (i + 1) % n, n) for i in range(n)] + [tuple(reversed(range(n)))]
        return v, f
    if shape == "triangle":  # a flat prism: apex at +Y, base along -Y, filling its box
        tri = [(0.0, sy), (-sx, -sy), (sx, -sy)]
        v = [(x, y, -sz) for x, y in tri] + [(x, y, sz) for x, y in tri]
        f = [(2, 1, 0), (3, 4, 5)] + [(i, (i + 1) % 3, 3 + (i + 1) % 3, 3 + i) for i in range(3)]
        return v, f
    raise RenderSetupError(f"unknown shape {shape!r}; allowed: cube, cylinder, cone, square, disc, triangle")


def _texture_node(nodes, kind: str, scale: float):
    """A procedural texture node whose Fac output drives a two-colour mix."""
    node_types = {
        "checker": "ShaderNodeTexChecker", "noise": "ShaderNodeTexNoise", "bricks": "ShaderNodeTexBrick",
        "wave": "ShaderNodeTexWave", "voronoi": "ShaderNodeTexVoronoi", "magic": "ShaderNodeTexMagic",
    }
    if kind not in node_types:
        raise RenderSetupError(f"unknown texture {kind!r}; allowed: {', '.join(node_types)}")
    tex = nodes.new(node_types[kind])
    tex.inputs["Scale"].default_value = scale
    if kind == "bricks":
        tex.inputs["Mortar Size"].default_value = 0.04
    if kind == "noise":
        tex.inputs["Detail"].default_value = 3.0
    fac = tex.outputs["Distance"] if kind == "voronoi" else tex.outputs["Fac"]
    return tex, fac


def _textured_material(name: str, mat_spec: dict, coords: str):
    """Principled BSDF whose base colour mixes two colours by a procedural texture in `coords` space; texture
    "plain" is one flat colour, the mean of the two (the spec makes them equal), with no texture node at all."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = mat_spec["roughness"]
    bsdf.inputs["Metallic"].default_value = mat_spec.get("metallic", 0.0)
    if mat_spec["texture"] == "plain":
        mean = [(a + b) / 2 for a, b in zip(mat_spec["color_a"], mat_spec["color_b"])]
        bsdf.inputs["Base Color"].default_value = (*mean, 1.0)
        return mat
    coord = nodes.new("ShaderNodeTexCoord")
    tex, fac = _texture_node(nodes, mat_spec["texture"], mat_spec["scale"])
    links.new(coord.outputs[coords], tex.inputs["Vector"])
    ramp = nodes.new("ShaderNodeMix")
    ramp.data_type = "RGBA"
    links.new(fac, ramp.inputs["Factor"])
    ramp.inputs["A"].default_value = (*mat_spec["color_a"], 1.0)
    ramp.inputs["B"].default_value = (*mat_spec["color_b"], 1.0)
    colour = ramp.outputs["Result"]
    if mat_spec.get("fade_radius"):
        # Fade the pattern to its mean colour with distance from the origin: far ground texture is finer
        # than a pixel, aliases, and costs many samples to converge while telling a model nothing.
        r0, r1 = mat_spec["fade_radius"]
        dist = nodes.new("ShaderNodeVectorMath")
        dist.operation = "LENGTH"
        links.new(coord.outputs[coords], dist.inputs[0])
        ramp_dist = nodes.new("ShaderNodeMapRange")
        ramp_dist.inputs["From Min"].default_value, ramp_dist.inputs["From Max"].default_value = r0, r1
        links.new(dist.outputs["Value"], ramp_dist.inputs["Value"])
        fade = nodes.new("ShaderNodeMix")
        fade.data_type = "RGBA"
        links.new(ramp_dist.outputs["Result"], fade.inputs["Factor"])
        links.new(colour, fade.inputs["A"])
        mean = [(a + b) / 2 for a, b in zip(mat_spec["color_a"], mat_spec["color_b"])]
        fade.inputs["B"].default_value = (*mean, 1.0)
        colour = fade.outputs["Result"]
    links.new(colour, bsdf.inputs["Base Color"])
    return mat


def _link(obj):
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _key_pose(obj, locations, rotations):
    """Key location and quaternion rotation (wxyz) on frames 0..T-1, constant interpolation."""
    obj.rotation_mode = "QUATERNION"
    for f, (loc, rot) in enumerate(zip(locations, rotations)):
        obj.location = loc
        obj.rotation_quaternion = rot
        obj.keyframe_insert("location", frame=f)
        obj.keyframe_insert("rotation_quaternion", frame=f)
    # Poses are exact per frame; constant interpolation keeps motion blur or sub-frame evaluation
    # from ever blending two frames.
    action = obj.animation_data.action if obj.animation_data else None
    if action is not None:
        for fc in _fcurves(action):
            for kp in fc.keyframe_points:
                kp.interpolation = "CONSTANT"


def _fcurves(action):
    if hasattr(action, "fcurves"):  # Blender < 4.4
        return list(action.fcurves)
    curves = []
    for layer in action.layers:  # layered actions (Blender >= 4.4)
        for strip in layer.strips:
            for bag in strip.channelbags:
                curves.extend(bag.fcurves)
    return curves


def build_scene(spec: dict, device: str = "CPU", threads: int = 0) -> dict:
    """Reset Blender and build the spec's scene for a Cycles `device` ('CPU' or a GPU backend name, as
    returned by select_cycles_device) and `threads` render threads (0 = all cores).
    Returns {view name: camera object}."""
    # A fresh empty file per sample keeps memory flat; unlike read_factory_settings it keeps the
    # preferences, where the Cycles compute device lives.
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    # No .blend file from anywhere is ever opened; keep embedded-script auto-execution off all the same.
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    scene = bpy.context.scene
    r = spec["render"]

    # ground plane with its own procedural texture (world coordinates, so it doesn't move), or plain
    g = spec["ground"]
    half = g["size"] / 2
    mesh = bpy.data.meshes.new("ground")
    mesh.from_pydata([(-half, -half, 0), (half, -half, 0), (half, half, 0), (-half, half, 0)], [], [(0, 1, 2, 3)])
    ground = _link(bpy.data.objects.new("ground", mesh))
    ground.data.materials.append(_textured_material("ground", g["material"], "Object"))

    # the moving object
    o = spec["object"]
    verts, faces = _mesh_vertices_faces(o["shape"], o["dimensions"], o["bbox_offset"])
    mesh = bpy.data.meshes.new(o["shape"])
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    obj = _link(bpy.data.objects.new("object", mesh))
    obj.pass_index = OBJECT_PASS_INDEX
    obj.data.materials.append(_textured_material("object", o["material"], "Object"))
    _key_pose(obj, o["location"], o["rotation"])

    # lights: key sun with shadows, fill sun without, world colour for ambient
    for L in spec["lights"]:
        light = bpy.data.lights.new(L["name"], "SUN")
        light.energy = L["strength"]
        light.angle = math.radians(L["angle_deg"])
        light.use_shadow = L["cast_shadow"]
        light.color = L["color"]
        lo = _link(bpy.data.objects.new(L["name"], light))
        lo.rotation_mode = "QUATERNION"
        lo.rotation_quaternion = L["rotation"]
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (*spec["world"]["color"], 1.0)
    bg.inputs["Strength"].default_value = spec["world"]["strength"]
    scene.world = world

    # cameras, keyed per frame
    cameras = {}
    for c in spec["cameras"]:
        cam = bpy.data.cameras.new(c["name"])
        cam.lens = c["lens_mm"]
        cam.sensor_width = c["sensor_mm"]
        cam.sensor_fit = "AUTO"  # orthographic too: ortho_scale then spans the larger image side
        projection = c.get("projection", "perspective")
        if projection == "orthographic":
            cam.type = "ORTHO"
            cam.ortho_scale = c["ortho_scale"]
        elif projection != "perspective":
            raise RenderSetupError(f"unknown camera projection {projection!r}; allowed: perspective, orthographic")
        cam.clip_start, cam.clip_end = 0.01, 100.0
        co = _link(bpy.data.objects.new(CAMERA_PREFIX + CAMERA_SUFFIX_SEP + c["name"], cam))
        _key_pose(co, c["location"], c["rotation"])
        cameras[c["name"]] = co

    _configure_render(scene, r, device)
    if threads > 0:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = threads
    return cameras


def _configure_render(scene, r: dict, device: str):
    scene.render.resolution_x, scene.render.resolution_y = r["width"], r["height"]
    scene.render.resolution_percentage = 100
    scene.render.fps = r["fps"]
    scene.frame_start, scene.frame_end = 0, r["frames"] - 1
    scene.render.use_motion_blur = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "8"
    scene.render.image_settings.compression = 15  # PNG zlib level: small files, cheap to write
    # 'Standard' keeps colours as specified (AgX, the default, desaturates textures).
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.render.use_persistent_data = True  # keep the BVH between frames and views of one sample
    # No metadata in the PNGs (date, render time, host name): the same spec gives byte-identical files.
    for attr in dir(scene.render):
        if attr.startswith("use_stamp"):
            setattr(scene.render, attr, False)

    if r["engine"] == "cycles":
        scene.render.engine = "CYCLES"
        cy = scene.cycles
        cy.device = "CPU" if device == "CPU" else "GPU"
        cy.samples = r["samples"]
        cy.use_adaptive_sampling = False
        cy.seed = r["seed"]
        cy.max_bounces = r["max_bounces"]
        cy.diffuse_bounces = min(cy.diffuse_bounces, r["max_bounces"])
        cy.glossy_bounces = min(cy.glossy_bounces, r["max_bounces"])
        cy.transparent_max_bounces = 2
        cy.caustics_reflective = cy.caustics_refractive = False
        cy.filter_width = r.get("filter_width", 1.5)
        cy.use_denoising = r["denoiser"] == "oidn"
        if cy.use_denoising:
            cy.denoiser = "OPENIMAGEDENOISE"
            cy.denoising_input_passes = r.get("denoise_passes", "RGB_ALBEDO_NORMAL")
            cy.denoising_prefilter = r.get("denoise_prefilter", "NONE")
            cy.denoising_quality = r.get("denoise_quality", "FAST")
    elif r["engine"] == "eevee":
        scene.render.engine = "BLENDER_EEVEE"
        scene.eevee.taa_render_samples = r["samples"]
    else:
        raise RenderSetupError(f"unknown engine {r['engine']!r}; allowed: cycles, eevee")

    # Compositor: the RGB goes out unchanged, the object's ID mask (and depth) to extra file outputs.
    view_layer = scene.view_layers[0]
    view_layer.use_pass_object_index = r["engine"] == "cycles"
    view_layer.use_pass_cryptomatte_object = r["engine"] == "eevee"  # EEVEE has no Object Index pass
    view_layer.use_pass_z = bool(r.get("depth"))
    tree = bpy.data.node_groups.new("compositor", "CompositorNodeTree")
    scene.compositing_node_group = tree
    tree.interface.new_socket(name="Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Image"], out.inputs["Image"])
    if r["engine"] == "cycles":
        id_mask = tree.nodes.new("CompositorNodeIDMask")
        id_mask.inputs["Index"].default_value = OBJECT_PASS_INDEX
        id_mask.inputs["Anti-Alias"].default_value = False
        tree.links.new(layers.outputs["Object Index"], id_mask.inputs["ID value"])
        mask = id_mask.outputs[0]
    else:  # Cryptomatte's matte is anti-aliased: threshold it at half coverage
        crypto = tree.nodes.new("CompositorNodeCryptomatteV2")
        crypto.source = "RENDER"
        crypto.scene = scene
        crypto.matte_id = "object"
        tree.links.new(layers.outputs["Image"], crypto.inputs["Image"])
        half = tree.nodes.new("ShaderNodeMath")
        half.operation = "GREATER_THAN"
        half.inputs[1].default_value = 0.5
        tree.links.new(crypto.outputs["Matte"], half.inputs[0])
        mask = half.outputs[0]
    mask_out = tree.nodes.new("CompositorNodeOutputFile")
    mask_out.format.media_type = "IMAGE"
    mask_out.format.file_format = "PNG"
    mask_out.format.color_mode = "BW"
    mask_out.format.color_depth = "8"
    mask_out.format.compression = 15
    mask_out.file_output_items.new("FLOAT", "mask")
    tree.links.new(mask, mask_out.inputs["mask"])

    if r.get("depth"):
        # depth as 16-bit PNG in millimetres: value / 65535 * 65.535 m
        scale = tree.nodes.new("ShaderNodeMath")  # 5.x compositors share the shader Math node
        scale.operation = "DIVIDE"
        scale.inputs[1].default_value = 65.535
        tree.links.new(layers.outputs["Depth"], scale.inputs[0])
        depth_out = tree.nodes.new("CompositorNodeOutputFile")
        depth_out.format.media_type = "IMAGE"
        depth_out.format.file_format = "PNG"
        depth_out.format.color_mode = "BW"
        depth_out.format.color_depth = "16"
        depth_out.file_output_items.new("FLOAT", "depth")
        tree.links.new(scale.outputs[0], depth_out.inputs["depth"])


def render_views(spec: dict, cameras: dict, out_dir: str) -> dict:
    """Render every view's clip into out_dir/<view>/{rgb,mask[,depth]}/NNNN.png; returns timings.

    All cameras render in one animation pass through Blender's multi-view: each view is a camera found by
    its name suffix, so scene sync, BVH updates and the frame change happen once per frame, not per view.
    """
    scene = bpy.context.scene
    rd = scene.render
    rd.use_multiview = True
    rd.views_format = "MULTIVIEW"
    for view in rd.views:  # the default stereo pair
        view.use = False
    for name, cam in cameras.items():
        view = rd.views.new(name)
        view.camera_suffix = CAMERA_SUFFIX_SEP + name
        view.use = True
    rd.image_settings.views_format = "INDIVIDUAL"
    scene.camera = next(iter(cameras.values()))

    staging = os.path.join(out_dir, ".frames")
    rd.filepath = os.path.join(staging, "rgb", "####")
    file_nodes = {n.file_output_items[0].name: n for n in scene.compositing_node_group.nodes
                  if n.bl_idname == "CompositorNodeOutputFile"}
    for kind, node in file_nodes.items():
        node.directory = os.path.join(staging, kind)
        node.file_name = "####"
    t0 = time.perf_counter()
    bpy.ops.render.render(animation=True)
    seconds = time.perf_counter() - t0

    # Blender names files "0007_view0.png" (RGB) and "0007mask_view0.png" (file outputs): move each to
    # <view>/<kind>/0007.png
    for kind in ["rgb", *file_nodes]:
        for name in cameras:
            os.makedirs(os.path.join(out_dir, name, kind), exist_ok=True)
        tag = "" if kind == "rgb" else kind
        folder = os.path.join(staging, kind)
        for fname in os.listdir(folder):
            stem = fname[:-len(".png")]
            frame, _, view = stem.partition(tag + CAMERA_SUFFIX_SEP) if tag else stem.partition(CAMERA_SUFFIX_SEP)
            if view not in cameras or not frame.isdigit():
                raise RuntimeError(f"unexpected render output {os.path.join(folder, fname)}")
            os.replace(os.path.join(folder, fname), os.path.join(out_dir, view, kind, f"{frame}.png"))
        os.rmdir(folder)
    os.rmdir(staging)
    return {"render": seconds, "frames": spec["render"]["frames"], "views": len(cameras)}
