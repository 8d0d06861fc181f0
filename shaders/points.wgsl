// Scatter points as instanced sprites: one instance per point (position in data units and a
// packed sRGB colour), six vertices per instance forming a square, shaded into an anti-aliased
// disk. The viewport is the plot's rectangle, so clip space spans the plot.

struct View {
    // Data units to clip space: clip = position * scale + offset.
    scale: vec2<f32>,
    offset: vec2<f32>,
    // A point's radius in clip units, per axis.
    radius: vec2<f32>,
    _pad: vec2<f32>,
};

@group(0) @binding(0) var<uniform> view: View;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) color: vec4<f32>,
    @location(1) corner: vec2<f32>,
};

@vertex
fn vs_main(
    @builtin(vertex_index) vertex: u32,
    @location(0) position: vec2<f32>,
    @location(1) color: u32,
) -> VertexOut {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(-1.0, -1.0), vec2<f32>(1.0, -1.0), vec2<f32>(-1.0, 1.0),
        vec2<f32>(-1.0, 1.0), vec2<f32>(1.0, -1.0), vec2<f32>(1.0, 1.0),
    );
    let corner = corners[vertex];
    var out: VertexOut;
    let centre = position * view.scale + view.offset;
    out.position = vec4<f32>(centre + corner * view.radius, 0.0, 1.0);
    out.color = unpack4x8unorm(color);
    out.corner = corner;
    return out;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let d = length(in.corner);
    if d > 1.0 {
        discard;
    }
    // A soft one-pixel-ish edge; egui blends premultiplied colours.
    let coverage = in.color.a * (1.0 - smoothstep(0.75, 1.0, d));
    return vec4<f32>(in.color.rgb * coverage, coverage);
}
