//! The candle model of graphs (`cnnc::nn::GraphModel`): every node's forward against a
//! naive loop over its index sets (convs by `s(ℓ,i)`/`a(ℓ,i)`/`c(ℓ,i)`, pools by
//! `t(ℓ,i)`, the joins, slices, shuffles, gates, resizes and BatchNorm by their
//! definitions, element-wise functions by the IR's own `Expr::eval`); the gradients of
//! whole models against central finite differences (f64) on a residual block, a dense
//! block and an inverted residual, all with BatchNorm; BatchNorm's running statistics;
//! ResNet-18's parameters against torch's export of torchvision's model.

use candle_core::{DType, Device, Tensor, Var};
use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::ir::{self, Activation, BatchNorm, Expr, Fn1, Graph, Node, Op, Origin, Pad, ParamNames, PoolKind, Shape, Standardized, ValueId};
use cnnc::nn::GraphModel;
use cnnc::{GraphRequest, InputSize};

fn req(mode: Mode) -> GraphRequest {
    GraphRequest { opts: Options { mode, std_cap: None }, analysis: Analysis::Paper, branch_scale: 1.0, batch: None }
}

fn model_of(g: &Graph, seed: u64) -> GraphModel {
    let plan = cnnc::plan_graph(g, req(Mode::Forward)).unwrap_or_else(|e| panic!("{e}"));
    GraphModel::new(g, &plan, seed, &Device::Cpu, DType::F64).unwrap_or_else(|e| panic!("{e}"))
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|_| 2.0 * self.next()).collect::<Vec<f64>>(), dims, &Device::Cpu).unwrap()
    }
}

/// A graph under construction: `push` returns the value the node makes.
struct Builder(Graph);

impl Builder {
    fn new(input: Shape) -> Builder {
        Builder(Graph { name: "test".into(), input, nodes: Vec::new(), notes: Vec::new() })
    }
    fn push(&mut self, op: Op, inputs: &[ValueId], output: Shape) -> ValueId {
        let k = self.0.nodes.len();
        let name = format!("n{k}");
        self.0.nodes.push(Node { op, inputs: inputs.to_vec(), output, name: name.clone(), params: None, origin: Origin::OnnxNode(name) });
        ValueId(k + 1)
    }
    fn shape(&self, v: ValueId) -> Shape {
        self.0.shape(v)
    }
    fn conv(&mut self, x: ValueId, out: u64, k: u64, stride: u64, pad: [u64; 4], groups: u64) -> ValueId {
        let (c, h, w) = self.shape(x).chw();
        let pad = [Pad { begin: pad[0], end: pad[2] }, Pad { begin: pad[1], end: pad[3] }];
        let oh = ir::conv_out_size(h, k, stride, pad[0], 1).unwrap();
        let ow = ir::conv_out_size(w, k, stride, pad[1], 1).unwrap();
        let conv = ir::Conv {
            in_channels: c,
            out_channels: out,
            kernel: [k, k],
            stride: [stride, stride],
            pad,
            dilation: [1, 1],
            groups,
            bias: true,
        };
        self.push(Op::Conv(conv), &[x], Shape::Image { c: out, h: oh, w: ow })
    }
    fn unary(&mut self, op: Op, x: ValueId) -> ValueId {
        let s = self.shape(x);
        self.push(op, &[x], s)
    }
    fn bn(&mut self, x: ValueId) -> ValueId {
        let c = self.shape(x).chw().0;
        let k = self.0.nodes.len();
        self.unary(Op::BatchNorm(BatchNorm::batch(c, 1e-5, true, format!("bn{k}.weight"), format!("bn{k}.bias"))), x)
    }
}

/// One sample's output of node `k` from its inputs (flat, PyTorch's C, H, W order), by the
/// index sets and definitions; `params` are the model's parameters by name; `batch` the
/// same node input for every sample (BatchNorm's statistics).
fn naive(g: &Graph, k: usize, inputs: &[Vec<f64>], params: &dyn Fn(&str) -> Vec<f64>, batch: &[Vec<f64>]) -> Vec<f64> {
    let n = &g.nodes[k];
    let x = &inputs[0];
    let in_shape = g.shape(n.inputs[0]);
    let (c, h, w) = in_shape.chw();
    let (hw, (oc, oh, ow)) = ((h * w) as usize, n.output.chw());
    match &n.op {
        Op::Conv(_) | Op::Linear(_) => {
            let wt = cnnc::unify::weight(n, in_shape);
            let gm = &wt.geometry;
            let wv = params(&wt.weight_param);
            // A standardized weight: factor · gain_f · (v − mean)/√(biased var + ε) per filter f.
            let wv = match n.params.as_ref().and_then(|p| p.standardized.as_ref()) {
                None => wv,
                Some(s) => {
                    let per = wv.len() / gm.out_channels as usize;
                    let factor = s.gain_param.as_ref().map_or(s.gain, |(_, init)| s.gain / init);
                    let gain = s.gain_param.as_ref().map(|(name, _)| params(name));
                    (0..wv.len())
                        .map(|i| {
                            let f = i / per;
                            let filter = &wv[f * per..(f + 1) * per];
                            let mean = filter.iter().sum::<f64>() / per as f64;
                            let var = filter.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / per as f64;
                            factor * gain.as_ref().map_or(1.0, |g| g[f]) * (wv[i] - mean) / (var + s.epsilon).sqrt()
                        })
                        .collect()
                }
            };
            let b = wt.bias_param.as_ref().map(|b| params(b));
            let per_kernel = gm.taps_per_kernel();
            (0..gm.m_out())
                .map(|i| {
                    let ch = gm.c(i);
                    let mut u = b.as_ref().map_or(0.0, |b| b[ch as usize]);
                    gm.for_each_s(i, |input, tap| u += x[input as usize] * wv[(ch * per_kernel + tap) as usize]);
                    u
                })
                .collect()
        }
        Op::Pool(_) | Op::GlobalPool(_) => {
            let p = cnnc::unify::pooling(n, in_shape);
            (0..p.geometry.m_out())
                .map(|o| {
                    let t: Vec<f64> = p.geometry.t_set(o).map(|i| x[i as usize]).collect();
                    match p.kind {
                        PoolKind::Max => t.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                        PoolKind::Avg => t.iter().sum::<f64>() / t.len() as f64,
                    }
                })
                .collect()
        }
        Op::Activation(a) => x.iter().map(|&v| a.eval(v).0).collect(),
        Op::Elementwise(e) => x.iter().map(|&v| e.eval(v).v).collect(),
        Op::Flatten => x.clone(),
        Op::Add => (0..x.len()).map(|i| inputs.iter().map(|v| v[i]).sum()).collect(),
        Op::Concat => inputs.concat(),
        Op::Mul => {
            let gate = &inputs[1];
            (0..x.len()).map(|i| x[i] * if gate.len() == x.len() { gate[i] } else { gate[i / hw] }).collect()
        }
        Op::ChannelSlice { start, end } => x[*start as usize * hw..*end as usize * hw].to_vec(),
        Op::Shuffle { groups } => {
            let per = c / groups;
            let mut out = vec![0.0; x.len()];
            for gi in 0..*groups {
                for kk in 0..per {
                    let (from, to) = ((gi * per + kk) as usize, (kk * groups + gi) as usize);
                    out[to * hw..(to + 1) * hw].copy_from_slice(&x[from * hw..(from + 1) * hw]);
                }
            }
            out
        }
        Op::Dilate { stride } => {
            let mut out = vec![0.0; (oc * oh * ow) as usize];
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        out[(ch * oh * ow + y * stride[0] * ow + xx * stride[1]) as usize] = x[(ch * h * w + y * w + xx) as usize];
                    }
                }
            }
            out
        }
        Op::Resize { scale, linear } => {
            // The source position of output o along an axis of `len`, as two taps.
            let taps = |o: u64, s: u64, len: u64| -> [(u64, f64); 2] {
                if !linear {
                    return [(o / s, 1.0), (0, 0.0)];
                }
                let src = ((o as f64 + 0.5) / s as f64 - 0.5).max(0.0).min((len - 1) as f64);
                let i0 = src.floor() as u64;
                [(i0, 1.0 - (src - i0 as f64)), ((i0 + 1).min(len - 1), src - i0 as f64)]
            };
            let mut out = Vec::new();
            for ch in 0..c {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut v = 0.0;
                        for (iy, a) in taps(y, scale[0], h) {
                            for (ix, b) in taps(xx, scale[1], w) {
                                v += a * b * x[(ch * h * w + iy * w + ix) as usize];
                            }
                        }
                        out.push(v);
                    }
                }
            }
            out
        }
        Op::Resample(r) => {
            // Output (y, x) = Σ over the taps of y along h and of x along w, as the IR
            // defines them (`Resample::weights`, compared with torch's in tests/onnx.rs).
            let (rows, cols) = (r.weights(0, h, oh), r.weights(1, w, ow));
            let mut out = Vec::new();
            for ch in 0..c as usize {
                for row in &rows {
                    for col in &cols {
                        let mut v = 0.0;
                        for &(iy, a) in row {
                            for &(ix, b) in col {
                                v += a * b * x[ch * (h * w) as usize + iy * w as usize + ix];
                            }
                        }
                        out.push(v);
                    }
                }
            }
            out
        }
        Op::RadixSoftmax { radix, groups } => {
            // Output (r, g, k) is the softmax at r of inputs (g, ·, k).
            let (radix, groups) = (*radix as usize, *groups as usize);
            let per = x.len() / (radix * groups);
            let mut out = vec![0.0; x.len()];
            for g in 0..groups {
                for k in 0..per {
                    let at = |r: usize| x[(g * radix + r) * per + k];
                    let total: f64 = (0..radix).map(|r| at(r).exp()).sum();
                    for r in 0..radix {
                        out[(r * groups + g) * per + k] = at(r).exp() / total;
                    }
                }
            }
            out
        }
        Op::AddBroadcast => (0..x.len()).map(|i| x[i] + inputs[1][i / hw]).collect(),
        Op::SoftmaxPositions => (0..x.len())
            .map(|i| {
                let ch = i / hw;
                x[i].exp() / x[ch * hw..(ch + 1) * hw].iter().map(|v| v.exp()).sum::<f64>()
            })
            .collect(),
        Op::AttentionPool => (0..c as usize).map(|ch| (0..hw).map(|p| inputs[1][p] * x[ch * hw + p]).sum()).collect(),
        Op::SwapChannelsWidth => {
            // Output channel b, position a = input channel a, position b.
            let (a_len, b_len) = (c as usize, w as usize);
            let mut out = vec![0.0; x.len()];
            for a in 0..a_len {
                for b in 0..b_len {
                    out[b * a_len + a] = x[a * b_len + b];
                }
            }
            out
        }
        Op::BatchNorm(bn) => {
            let gamma = params(&bn.scale);
            let beta = if bn.shift.is_empty() { vec![0.0; gamma.len()] } else { params(&bn.shift) };
            let c = c as usize;
            // γ and β of element i (per channel, or per element for a [C, H, W] affine).
            let affine = |v: &[f64], i: usize| if v.len() == c { v[i / hw] } else { v[i] };
            // (mean, biased variance) of a list.
            let stats = |v: &[f64]| {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64)
            };
            // The statistics each element is normalized with.
            let of: Vec<(f64, f64)> = match (bn.groups, bn.per_position, bn.training) {
                (Some(_), true, _) => (0..x.len()).map(|i| stats(&(0..c).map(|ch| x[ch * hw + i % hw]).collect::<Vec<_>>())).collect(),
                (Some(g), false, _) => {
                    let per = x.len() / g as usize;
                    (0..x.len()).map(|i| stats(&x[i / per * per..(i / per + 1) * per])).collect()
                }
                (None, _, true) => (0..x.len())
                    .map(|i| stats(&batch.iter().flat_map(|s| s[i / hw * hw..(i / hw + 1) * hw].to_vec()).collect::<Vec<_>>()))
                    .collect(),
                (None, _, false) => vec![(0.0, 1.0); x.len()],
            };
            (0..x.len()).map(|i| affine(&gamma, i) * (x[i] - of[i].0) / (of[i].1 + bn.epsilon).sqrt() + affine(&beta, i)).collect()
        }
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn sample(t: &Tensor, s: usize) -> Vec<f64> {
    flat(&t.get(s).unwrap())
}

/// Runs `g` unfused on a batch of `n` and checks every node against [`naive`].
fn check_nodes(g: &Graph, n: usize, seed: u64) {
    let mut m = model_of(g, seed);
    m.unfuse();
    // Parameters all different (BatchNorm's γ and β start at one value each).
    let randomize = |m: &GraphModel| {
        let mut rng = Lcg(seed ^ 0x55);
        for (_, v) in m.named_vars() {
            v.set(&rng.tensor(v.as_tensor().dims())).unwrap();
        }
    };
    randomize(&m);
    let params: std::collections::HashMap<String, Vec<f64>> = m.named_vars().into_iter().map(|(k, v)| (k, flat(v.as_tensor()))).collect();
    let get = |name: &str| params.get(name).cloned().unwrap_or_else(|| panic!("no parameter {name}"));
    let mut dims = vec![n];
    dims.extend(g.input.dims().iter().map(|&d| d as usize));
    let x = Lcg(seed).tensor(&dims);
    let mut all: Vec<Tensor> = vec![x.clone()];
    m.values(&x, |_, v| {
        all.push(v.clone());
        Ok(v)
    })
    .unwrap();
    for (k, node) in g.nodes.iter().enumerate() {
        let batch: Vec<Vec<f64>> = (0..n).map(|s| sample(&all[node.inputs[0].0], s)).collect();
        for s in 0..n {
            let inputs: Vec<Vec<f64>> = node.inputs.iter().map(|v| sample(&all[v.0], s)).collect();
            let want = naive(g, k, &inputs, &get, &batch);
            let got = sample(&all[k + 1], s);
            assert_eq!(got.len(), want.len(), "node {k} ({})", node.op.kind_name());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                    "node {k} ({}), sample {s}, element {i}: {a} vs naive {b}",
                    node.op.kind_name()
                );
            }
        }
    }
    // The fused model (conv + ReLU as one op) gives the same output.
    let fused = model_of(g, seed);
    randomize(&fused);
    let (a, b) = (flat(&fused.forward(&x).unwrap()), flat(all.last().unwrap()));
    assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-12 * (1.0 + b.abs())), "fused and unfused differ");
}

/// Grouped and depthwise convs, BatchNorm, an element-wise function, slices, concat,
/// shuffle, Add, a global pool feeding a sigmoid gate, Mul, max pooling, both resizes, a
/// dilate, average pooling, flatten and a linear layer.
#[test]
fn every_node_matches_the_naive_loop() {
    let mut b = Builder::new(Shape::Image { c: 4, h: 6, w: 5 });
    let v1 = b.conv(ValueId(0), 6, 3, 1, [1, 0, 1, 2], 2);
    let v2 = b.unary(Op::Activation(Activation::Relu), v1);
    let v3 = b.conv(v2, 6, 3, 2, [1, 1, 1, 1], 6);
    let v4 = b.bn(v3);
    let v5 = b.unary(Op::Elementwise(Expr::Apply(Fn1::HardSwish, Box::new(Expr::X))), v4);
    let (_, h, w) = b.shape(v5).chw();
    let v6 = b.push(Op::ChannelSlice { start: 0, end: 2 }, &[v5], Shape::Image { c: 2, h, w });
    let v7 = b.push(Op::ChannelSlice { start: 2, end: 6 }, &[v5], Shape::Image { c: 4, h, w });
    let v8 = b.push(Op::Concat, &[v7, v6], Shape::Image { c: 6, h, w });
    let v9 = b.unary(Op::Shuffle { groups: 2 }, v8);
    let v10 = b.push(Op::Add, &[v9, v5, v4], Shape::Image { c: 6, h, w });
    let v11 = b.push(Op::GlobalPool(PoolKind::Avg), &[v10], Shape::Image { c: 6, h: 1, w: 1 });
    let v12 = b.unary(Op::Activation(Activation::Sigmoid), v11);
    let v13 = b.push(Op::Mul, &[v10, v12], Shape::Image { c: 6, h, w });
    let pool = ir::Pool {
        kind: PoolKind::Max,
        kernel: [2, 2],
        stride: [1, 1],
        pad: [Pad::default(); 2],
        ceil_mode: false,
        count_include_pad: false,
    };
    let v14 = b.push(Op::Pool(pool), &[v13], Shape::Image { c: 6, h: h - 1, w: w - 1 });
    let up = Shape::Image { c: 6, h: 2 * (h - 1), w: 3 * (w - 1) };
    let v15 = b.push(Op::Resize { scale: [2, 3], linear: false }, &[v14], up);
    let v16 = b.push(Op::Resize { scale: [2, 3], linear: true }, &[v14], up);
    let v17 = b.push(Op::Add, &[v15, v16], up);
    let (_, uh, uw) = up.chw();
    let v18 = b.push(Op::Dilate { stride: [2, 1] }, &[v17], Shape::Image { c: 6, h: 2 * uh - 1, w: uw });
    let avg = ir::Pool {
        kind: PoolKind::Avg,
        kernel: [3, 2],
        stride: [2, 2],
        pad: [Pad::default(); 2],
        ceil_mode: false,
        count_include_pad: false,
    };
    let (ph, pw) =
        (ir::pool_out_size(2 * uh - 1, 3, 2, Pad::default(), false).unwrap(), ir::pool_out_size(uw, 2, 2, Pad::default(), false).unwrap());
    let v19 = b.push(Op::Pool(avg), &[v18], Shape::Image { c: 6, h: ph, w: pw });
    let v20 = b.push(Op::Flatten, &[v19], Shape::Vector { n: 6 * ph * pw });
    b.push(Op::Linear(ir::Linear { in_features: 6 * ph * pw, out_features: 3, bias: true }), &[v20], Shape::Vector { n: 3 });
    check_nodes(&b.0, 3, 7);
}

/// Group, instance and layer norms (over (C, H, W) with an element-wise affine, and over
/// the channels at each position), a layer scale and an inference-mode BatchNorm.
#[test]
fn normalizations_match_the_naive_loop() {
    let mut b = Builder::new(Shape::Image { c: 3, h: 4, w: 3 });
    let v = b.conv(ValueId(0), 4, 3, 1, [1, 1, 1, 1], 1);
    let norm = |k: usize, groups: Option<u64>, per_position: bool, training: bool, affine: Vec<u64>, eps: f64, shift: bool| {
        Op::BatchNorm(BatchNorm {
            channels: 4,
            epsilon: eps,
            training,
            groups,
            per_position,
            scale: format!("norm{k}.weight"),
            shift: if shift { format!("norm{k}.bias") } else { String::new() },
            affine,
        })
    };
    let v = b.unary(norm(1, Some(2), false, true, vec![4], 1e-5, true), v);
    let v = b.unary(norm(2, Some(4), false, true, vec![4], 1e-3, true), v);
    let v = b.unary(norm(3, Some(1), false, true, vec![4, 4, 3], 1e-5, true), v);
    let v = b.unary(norm(4, Some(1), true, true, vec![4], 1e-6, true), v);
    let v = b.unary(norm(5, None, false, false, vec![4], 0.0, false), v);
    b.unary(norm(6, None, false, false, vec![4], 1e-5, true), v);
    assert_eq!(b.0.nodes[5].op.clone(), norm(5, None, false, false, vec![4], 0.0, false));
    if let Op::BatchNorm(bn) = &b.0.nodes[5].op {
        assert_eq!(bn.mode(), "scale");
    }
    check_nodes(&b.0, 3, 4);
}

/// Makes the conv that makes `v` one of a standardized weight (gain `gain`; with a
/// per-filter gain parameter `{name}.gain` of initial value 1.3 where `param`).
fn standardize(b: &mut Builder, v: ValueId, gain: f64, param: bool, epsilon: f64) {
    let n = &mut b.0.nodes[v.0 - 1];
    let name = n.name.clone();
    let gain_param = param.then(|| (format!("{name}.gain"), 1.3));
    n.params = Some(ParamNames {
        weight: format!("{name}.weight"),
        bias: Some(format!("{name}.bias")),
        shape: None,
        standardized: Some(Standardized { gain, gain_param, epsilon }),
        transposed: false,
    });
}

/// Convs of standardized weights: without and with a per-filter gain parameter, grouped,
/// one whose ReLU runs in it, one reading a vector.
fn standardized_convs() -> Graph {
    let mut b = Builder::new(Shape::Image { c: 4, h: 5, w: 4 });
    let v = b.conv(ValueId(0), 6, 3, 1, [1, 1, 1, 1], 1);
    standardize(&mut b, v, 1.0, false, 1e-10);
    let v = b.unary(Op::Activation(Activation::Relu), v);
    let v = b.conv(v, 4, 3, 2, [1, 0, 1, 1], 2);
    standardize(&mut b, v, 1.7 / 27f64.sqrt(), true, 1e-6);
    let v = b.unary(Op::Elementwise(Expr::Apply(Fn1::Act(Activation::Tanh), Box::new(Expr::X))), v);
    let v = b.push(Op::GlobalPool(PoolKind::Avg), &[v], Shape::Image { c: 4, h: 1, w: 1 });
    let v = b.conv(v, 3, 1, 1, [0; 4], 1);
    standardize(&mut b, v, 0.8, true, 1e-4);
    let v = b.push(Op::Flatten, &[v], Shape::Vector { n: 3 });
    b.push(Op::Linear(ir::Linear { in_features: 3, out_features: 2, bias: true }), &[v], Shape::Vector { n: 2 });
    b.0
}

#[test]
fn standardized_convs_match_the_naive_loop() {
    check_nodes(&standardized_convs(), 3, 5);
}

#[test]
fn gradients_of_standardized_convs() {
    check_gradients(&standardized_convs(), 3);
}

/// torch's exports of BiT's `StdConv2d` and NF-ResNets' `ScaledStdConv2d`
/// (`tests/data/onnx/std`): the plan's gain parameter value, every node against the naive
/// loop, the gradients against finite differences.
#[test]
fn torchs_standardized_convs_match_the_naive_loop() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (path, gains) in [("tests/data/onnx/std/std_conv.ts.onnx", 0), ("tests/data/onnx/std/scaled_std_conv.ts.onnx", 2)] {
        let g = cnnc::load(&root.join(path), InputSize::Declared).unwrap_or_else(|e| panic!("{e}")).graph;
        let std_nodes = g.nodes.iter().filter(|n| n.params.as_ref().is_some_and(|p| p.standardized.is_some())).count();
        assert_eq!(std_nodes, 2, "{path}");
        let plan = cnnc::plan_graph(&g, req(Mode::Forward)).unwrap();
        let m = model_of(&g, 1);
        let planned: Vec<(String, f64)> =
            plan.layers.iter().filter_map(|l| l.standardized.as_ref()?.gain_param.as_ref()).map(|p| (p.name.clone(), p.value)).collect();
        assert_eq!(planned.len(), gains, "{path}");
        for (name, value) in planned {
            let var = m.named_vars().into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{path}: no parameter {name}")).1;
            assert!(flat(var.as_tensor()).iter().all(|&v| v == value), "{path}: {name} starts at the plan's {value}");
        }
        check_nodes(&g, 2, 3);
        check_gradients(&g, 2);
    }
}

/// The attention ops: split attention's radix softmax (two, of 3 and 2 groups), global-context
/// attention's softmax over the positions, attention pool and broadcast add, efficient
/// channel attention's swap of channels and width and back.
fn attention_ops() -> Graph {
    let mut b = Builder::new(Shape::Image { c: 3, h: 4, w: 3 });
    let x = b.conv(ValueId(0), 12, 3, 1, [1, 1, 1, 1], 1);
    let pooled = b.push(Op::GlobalPool(PoolKind::Avg), &[x], Shape::Image { c: 12, h: 1, w: 1 });
    let r2 = b.unary(Op::RadixSoftmax { radix: 2, groups: 3 }, pooled);
    let r3 = b.unary(Op::RadixSoftmax { radix: 2, groups: 2 }, r2);
    let gated = b.push(Op::Mul, &[x, r3], Shape::Image { c: 12, h: 4, w: 3 });
    let mask = b.conv(gated, 1, 1, 1, [0; 4], 1);
    let weights = b.unary(Op::SoftmaxPositions, mask);
    let context = b.push(Op::AttentionPool, &[gated, weights], Shape::Image { c: 12, h: 1, w: 1 });
    let row = b.push(Op::SwapChannelsWidth, &[context], Shape::Image { c: 1, h: 1, w: 12 });
    // A 1×3 conv across the channels, as efficient channel attention's.
    let across = ir::Conv {
        in_channels: 1,
        out_channels: 1,
        kernel: [1, 3],
        stride: [1, 1],
        pad: [Pad { begin: 0, end: 0 }, Pad { begin: 1, end: 1 }],
        dilation: [1, 1],
        groups: 1,
        bias: false,
    };
    let row = b.push(Op::Conv(across), &[row], Shape::Image { c: 1, h: 1, w: 12 });
    let column = b.push(Op::SwapChannelsWidth, &[row], Shape::Image { c: 12, h: 1, w: 1 });
    let sum = b.push(Op::AddBroadcast, &[gated, column], Shape::Image { c: 12, h: 4, w: 3 });
    let v = b.conv(sum, 2, 3, 2, [1, 1, 1, 1], 1);
    let (_, h, w) = b.shape(v).chw();
    let v = b.push(Op::Flatten, &[v], Shape::Vector { n: 2 * h * w });
    b.push(Op::Linear(ir::Linear { in_features: 2 * h * w, out_features: 3, bias: true }), &[v], Shape::Vector { n: 3 });
    b.0
}

#[test]
fn attention_ops_match_the_naive_loop() {
    check_nodes(&attention_ops(), 3, 6);
}

#[test]
fn gradients_of_attention_ops() {
    check_gradients(&attention_ops(), 2);
}

/// Resamplings to any size (ONNX `Resize`): linear and nearest, up and down, non-square,
/// every coordinate transform and nearest rounding, a size of 1.
fn resamplings() -> Graph {
    use ir::{CoordTransform as T, NearestMode as R};
    let mut b = Builder::new(Shape::Image { c: 2, h: 5, w: 4 });
    let v = b.conv(ValueId(0), 3, 1, 1, [0; 4], 1);
    let resample = |b: &mut Builder, x: ValueId, linear: bool, transform: T, nearest: R, out: [u64; 2]| {
        let (c, h, w) = b.shape(x).chw();
        let scale = [out[0] as f64 / h as f64, out[1] as f64 / w as f64];
        b.push(Op::Resample(ir::Resample { linear, transform, nearest, scale }), &[x], Shape::Image { c, h: out[0], w: out[1] })
    };
    let a = resample(&mut b, v, true, T::HalfPixel, R::Floor, [7, 3]);
    let a = resample(&mut b, a, true, T::AlignCorners, R::Floor, [4, 6]);
    let a = resample(&mut b, a, true, T::PytorchHalfPixel, R::Floor, [1, 5]);
    let a = resample(&mut b, a, false, T::Asymmetric, R::Floor, [3, 7]);
    let a = resample(&mut b, a, false, T::HalfPixel, R::RoundPreferCeil, [5, 4]);
    let a = resample(&mut b, a, false, T::TfHalfPixelForNn, R::Ceil, [2, 9]);
    let a = resample(&mut b, a, false, T::AlignCorners, R::RoundPreferFloor, [6, 3]);
    let a = resample(&mut b, a, true, T::Asymmetric, R::Floor, [4, 4]);
    let a = b.conv(a, 2, 3, 1, [1, 1, 1, 1], 1);
    let a = b.push(Op::GlobalPool(PoolKind::Avg), &[a], Shape::Image { c: 2, h: 1, w: 1 });
    let a = b.push(Op::Flatten, &[a], Shape::Vector { n: 2 });
    b.push(Op::Linear(ir::Linear { in_features: 2, out_features: 3, bias: true }), &[a], Shape::Vector { n: 3 });
    b.0
}

#[test]
fn resamplings_match_the_naive_loop() {
    check_nodes(&resamplings(), 2, 9);
}

#[test]
fn gradients_of_resamplings() {
    check_gradients(&resamplings(), 2);
}

/// torch's exports of `F.interpolate` to 7×7 (bilinear, align_corners True and False) and
/// then to 5×5 (nearest), `tests/data/onnx/resize`: every node against the naive loop.
#[test]
fn torchs_resizes_match_the_naive_loop() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for path in ["tests/data/onnx/resize/resize.ts.onnx", "tests/data/onnx/resize/resize.dynamo.onnx"] {
        let g = cnnc::load(&root.join(path), InputSize::Declared).unwrap_or_else(|e| panic!("{e}")).graph;
        assert_eq!(g.nodes.iter().filter(|n| matches!(n.op, Op::Resample(_))).count(), 3, "{path}");
        check_nodes(&g, 2, 3);
        check_gradients(&g, 2);
    }
}

/// Every function of the importer's element-wise expressions, and arithmetic with constants.
#[test]
fn elementwise_functions_match_the_ir() {
    let x = || Box::new(Expr::X);
    let fns = [
        Fn1::Act(Activation::LeakyRelu { slope: 0.1 }),
        Fn1::Act(Activation::Tanh),
        Fn1::Act(Activation::Gelu),
        Fn1::Act(Activation::Silu),
        Fn1::Clip { min: 0.0, max: 6.0 },
        Fn1::Clip { min: 0.0, max: f64::INFINITY },
        Fn1::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Fn1::HardSwish,
        Fn1::Elu { alpha: 0.7 },
        Fn1::Softplus,
        Fn1::Mish,
        Fn1::Erf,
        Fn1::Exp,
        Fn1::Neg,
        Fn1::Abs,
    ];
    let mut exprs: Vec<Expr> = fns.iter().map(|&f| Expr::Apply(f, x())).collect();
    // GELU written out: x·½(1 + erf(x/√2)); sqrt of a positive value; 1/(x² + 1) − 3.
    let c = |v: f64| Box::new(Expr::Const(v));
    exprs.push(Expr::Mul(
        x(),
        Box::new(Expr::Mul(c(0.5), Box::new(Expr::Add(c(1.0), Box::new(Expr::Apply(Fn1::Erf, Box::new(Expr::Div(x(), c(2f64.sqrt()))))))))),
    ));
    exprs.push(Expr::Apply(Fn1::Sqrt, Box::new(Expr::Add(Box::new(Expr::Mul(x(), x())), c(0.5)))));
    exprs.push(Expr::Sub(Box::new(Expr::Div(c(1.0), Box::new(Expr::Add(Box::new(Expr::Mul(x(), x())), c(1.0))))), c(3.0)));
    exprs.push(Expr::Mul(x(), Box::new(Expr::Apply(Fn1::Act(Activation::Sigmoid), x()))));
    for e in exprs {
        let mut b = Builder::new(Shape::Image { c: 2, h: 3, w: 3 });
        let v = b.conv(ValueId(0), 2, 1, 1, [0; 4], 1);
        b.unary(Op::Elementwise(e.clone()), v);
        let g = b.0;
        let m = model_of(&g, 3);
        let x = Lcg(5).tensor(&[2, 2, 3, 3]).affine(3.0, 0.0).unwrap();
        let mut seen = Vec::new();
        m.values(&x, |_, v| {
            seen.push(flat(&v));
            Ok(v)
        })
        .unwrap();
        for (u, y) in seen[0].iter().zip(&seen[1]) {
            let want = e.eval(*u).v;
            assert!((y - want).abs() <= 1e-9 * (1.0 + want.abs()), "{e} at {u}: {y} vs {want}");
        }
    }
}

/// Central differences of `loss = Σ out·r` against the model's backward (f64): every
/// parameter at a few entries, and the input.
fn check_gradients(g: &Graph, n: usize) {
    let m = model_of(g, 11);
    let mut dims = vec![n];
    dims.extend(g.input.dims().iter().map(|&d| d as usize));
    let mut rng = Lcg(13);
    let x = Var::from_tensor(&rng.tensor(&dims)).unwrap();
    let out = m.forward(x.as_tensor()).unwrap();
    let r = rng.tensor(out.dims());
    let loss_of =
        |m: &GraphModel, x: &Tensor| -> f64 { (m.forward(x).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() };
    let loss = (out * &r).unwrap().sum_all().unwrap();
    let grads = m.backward(&loss).unwrap();
    let mut vars: Vec<(String, Var)> = m.named_vars();
    vars.push(("input".into(), x.clone()));
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in vars {
        let g = flat(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")));
        let base = var.as_tensor().copy().unwrap();
        let values = flat(&base);
        let step = (values.len() / 5).max(1);
        for i in (0..values.len()).step_by(step) {
            let at = |d: f64| {
                let mut v = values.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap()).unwrap();
                loss_of(&m, x.as_tensor())
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((fd - g[i]).abs() <= 1e-5 * (1.0 + fd.abs()), "{name}[{i}]: backward {} vs finite difference {fd}", g[i]);
            checked += 1;
        }
        var.set(&base).unwrap();
    }
    assert!(checked > 10);
}

fn spec(text: &str) -> Graph {
    cnnc::load_bytes("test.cnn", text.as_bytes(), cnnc::FileKind::Cnn, InputSize::Declared).unwrap_or_else(|e| panic!("{e}")).graph
}

#[test]
fn gradients_of_a_residual_block_with_batchnorm() {
    let g = spec(
        "network R\ninput 3x6x6\nconv(3/p1) -> 4, batchnorm, relu\n\
         + (conv1: conv(3/p1, nobias) -> 4, bn1: batchnorm, relu, conv2: conv(3/p1, nobias) -> 4, bn2: batchnorm)\n\
         relu, global_avgpool, flatten, fc: linear -> 3\n",
    );
    assert!(g.nodes.iter().any(|n| n.op == Op::Add));
    check_gradients(&g, 3);
}

#[test]
fn gradients_of_a_dense_block_with_batchnorm() {
    let g = spec(
        "network D\ninput 3x5x5\nconv(3/p1, nobias) -> 4\n\
         block dense(w, k) { cat(@in, (batchnorm, relu, conv(1, nobias) -> w, batchnorm, relu, conv(3/p1, nobias) -> k)) }\n\
         dense(6, 2), dense(6, 2), batchnorm, relu, avgpool(2), global_avgpool, flatten, linear -> 3\n",
    );
    assert!(g.nodes.iter().any(|n| n.op == Op::Concat));
    check_gradients(&g, 2);
}

#[test]
fn gradients_of_an_inverted_residual_with_batchnorm() {
    let g = spec(
        "network M\ninput 4x6x6\n\
         + ({ conv(1, nobias) -> 8, batchnorm, relu6 }, { conv(3/p1, depthwise, nobias), batchnorm, relu6 }, conv(1, nobias) -> 4, batchnorm)\n\
         global_avgpool, flatten, linear -> 3\n",
    );
    check_gradients(&g, 3);
}

/// The running statistics: PyTorch's momentum 0.1 and unbiased batch variance after a
/// training step, then used in evaluation.
#[test]
fn batchnorm_running_statistics() {
    let mut b = Builder::new(Shape::Image { c: 2, h: 3, w: 2 });
    let v = b.conv(ValueId(0), 3, 1, 1, [0; 4], 1);
    b.bn(v);
    let g = b.0;
    let m = model_of(&g, 5);
    let x = Lcg(9).tensor(&[4, 2, 3, 2]);
    let mut u = None;
    m.values(&x, |k, v| {
        if k == 0 {
            u = Some(v.clone());
        }
        Ok(v)
    })
    .unwrap();
    let u = u.unwrap();
    let bufs: std::collections::HashMap<String, Vec<f64>> = m.buffers().into_iter().map(|(n, v)| (n, flat(v.as_tensor()))).collect();
    assert_eq!(
        bufs.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        ["bn1.running_mean".to_string(), "bn1.running_var".into()].into()
    );
    let (rm, rv) = (&bufs["bn1.running_mean"], &bufs["bn1.running_var"]);
    for (ch, (rm, rv)) in rm.iter().zip(rv).enumerate() {
        let all: Vec<f64> = (0..4).flat_map(|s| sample(&u.get(s).unwrap().get(ch).unwrap().unsqueeze(0).unwrap(), 0)).collect();
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (all.len() - 1) as f64;
        assert!((rm - 0.1 * mean).abs() < 1e-12, "momentum 0.1");
        assert!((rv - (0.9 + 0.1 * var)).abs() < 1e-12, "unbiased variance, momentum 0.1");
    }
    // Evaluation: (u − running mean)/√(running var + ε)·γ + β, no update.
    m.set_training(false);
    let y = flat(&m.forward(&x).unwrap());
    let gamma = flat(m.named_vars().iter().find(|(n, _)| n == "bn1.weight").unwrap().1.as_tensor());
    let uf = flat(&u);
    for (i, (yv, uv)) in y.iter().zip(&uf).enumerate() {
        let ch = (i / 6) % 3;
        let want = gamma[ch] * (uv - bufs["bn1.running_mean"][ch]) / (bufs["bn1.running_var"][ch] + 1e-5).sqrt();
        assert!((yv - want).abs() < 1e-12, "element {i}: {yv} vs {want}");
    }
    let after: Vec<f64> = flat(m.buffers()[0].1.as_tensor());
    assert_eq!(after, bufs["bn1.running_mean"], "evaluation does not update the running statistics");
}

/// ResNet-18 from the spec at 32×32: torchvision's parameter count, and the names and
/// shapes of torch's export of torchvision's model.
#[test]
fn resnet18_has_torchvisions_parameters() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = |path: &str| {
        let m = cnnc::load(&root.join(path), InputSize::Square(32)).unwrap_or_else(|e| panic!("{e}"));
        let plan = m.plan(req(Mode::Forward)).unwrap_or_else(|e| panic!("{e}"));
        GraphModel::new(&m.graph, &plan, 0, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{e}"))
    };
    let params = |m: &GraphModel| -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<(String, Vec<usize>)> = m.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().dims().to_vec())).collect();
        v.sort();
        v
    };
    let ours = model("specs/resnet18.cnn");
    let count: usize = ours.named_vars().iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    assert_eq!(count, 11_689_512);
    assert_eq!(params(&ours), params(&model("tests/data/onnx/real/resnet18.train.onnx")));
    let out = ours.forward(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(out.dims(), [2, 1000]);
}

/// A plan of another graph is refused, naming what differs.
#[test]
fn a_plan_of_another_graph_is_refused() {
    let a = spec("network A\ninput 3x6x6\nconv(3/p1) -> 4, relu, + (conv(3/p1) -> 4), global_avgpool, flatten, linear -> 3\n");
    let b = spec("network B\ninput 3x6x6\nconv(3/p1) -> 5, relu, + (conv(3/p1) -> 5), global_avgpool, flatten, linear -> 3\n");
    let plan = cnnc::plan_graph(&b, req(Mode::Forward)).unwrap();
    let err = GraphModel::new(&a, &plan, 0, &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(err.contains("the plan's shape is") && err.contains("0.weight"), "{err}");
}

/// A small residual network with BatchNorm, trained on synthetic images.
const TRAIN_SPEC: &str = "network T\ninput 3x12x12\nblock grow() { cat(@in, (conv(1) -> 2)) }\nconv(3/p1, nobias) -> 6, batchnorm, relu\n\
     + (conv(3/p1, nobias) -> 6, batchnorm, relu, conv(3/p1, nobias) -> 6, batchnorm)\n\
     relu, grow(), global_avgpool, flatten, linear -> 3\n";

fn train_config(data: &std::path::Path, epochs: usize) -> cnnc::train::Config {
    let flags = cnnc::train::Flags {
        batch_size: 6,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        seed: 3,
        device: "cpu".into(),
        val_split: 0.25,
        limit_train: 0,
        limit_val: 0,
        drop_last: false,
    };
    cnnc::train::Config::new("train.cnn", data, "forward", "paper", 12, epochs, &flags)
}

/// Training a graph: the loss goes down; 2 epochs straight equal 1 epoch and a resume
/// (weights, momentum and BatchNorm's running statistics, bit for bit).
#[test]
fn a_graph_trains_and_resumes_exactly() {
    use cnnc::train::{self, data};
    let root = std::env::temp_dir().join(format!("cnnc-graph-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    data::synthesize(&root.join("data"), 3, 12, 12, 1).unwrap();
    let g = spec(TRAIN_SPEC);
    let plan = cnnc::plan_graph(&g, req(Mode::Forward)).unwrap();
    let split = data::load(&root.join("data"), data::Target { channels: 3, size: 12 }, 0.25, 3).unwrap();
    let straight = root.join("straight");
    let s = train::train_graph(&g, &plan, &split, &train_config(&root.join("data"), 3), &straight, false, false).unwrap();
    assert_eq!(s.epochs.len(), 3);
    assert!(s.epochs[2].train_loss < s.epochs[0].train_loss, "the loss goes down: {:?}", s.epochs);
    assert!(s.epochs[2].val_loss.is_some_and(f64::is_finite));

    let two = root.join("two");
    train::train_graph(&g, &plan, &split, &train_config(&root.join("data"), 2), &two, false, false).unwrap();
    let split_run = root.join("split");
    train::train_graph(&g, &plan, &split, &train_config(&root.join("data"), 1), &split_run, false, false).unwrap();
    train::train_graph(&g, &plan, &split, &train_config(&root.join("data"), 2), &split_run, true, false).unwrap();
    let (a, b) = (train::checkpoint_weights(&two).unwrap(), train::checkpoint_weights(&split_run).unwrap());
    let running: Vec<&String> = a.iter().map(|t| &t.0).filter(|n| n.starts_with("buffer.") && n.ends_with(".running_var")).collect();
    assert_eq!(running.len(), 3, "every BatchNorm's running statistics are saved: {running:?}");
    let var = &a.iter().find(|t| t.0 == *running[0]).unwrap().1;
    assert!(var.iter().any(|&v| v != 1.0), "the running variance was updated");
    let differ: Vec<&String> = a.iter().zip(&b).filter(|(x, y)| x != y).map(|(x, _)| &x.0).collect();
    assert_eq!(a.len(), b.len());
    assert!(differ.is_empty(), "resumed weights, momentum and running statistics equal the straight run's; these differ: {differ:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// An epoch whose last batch is one image, for a network with a BatchNorm after its
/// global pool (one value per channel): the run stops with an error that names
/// `--drop-last`; with it, every epoch trains on whole batches only.
#[test]
fn drop_last_leaves_out_a_last_batch_batch_norm_cannot_normalize() {
    use cnnc::train::{self, data};
    let root = std::env::temp_dir().join(format!("cnnc-graph-drop-last-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    data::synthesize(&root.join("data"), 3, 12, 12, 1).unwrap();
    let g = spec(
        "network D\ninput 3x12x12\nconv(3/p1, nobias) -> 6, batchnorm, relu, global_avgpool, conv(1, nobias) -> 4, batchnorm, relu, flatten, linear -> 3\n",
    );
    let plan = cnnc::plan_graph(&g, req(Mode::Forward)).unwrap();
    let split = data::load(&root.join("data"), data::Target { channels: 3, size: 12 }, 0.25, 3).unwrap();
    let mut config = train_config(&root.join("data"), 2);
    config.limit_train = 7;
    let mut split = split;
    split.train.truncate(7);
    let err = train::train_graph(&g, &plan, &split, &config, &root.join("keep"), false, false).unwrap_err().to_string();
    assert!(err.contains("more than one value per channel") && err.contains("--drop-last"), "{err}");
    config.drop_last = true;
    let s = train::train_graph(&g, &plan, &split, &config, &root.join("drop"), false, false).unwrap();
    assert_eq!(s.epochs.len(), 2);
    let saved: cnnc::train::Config =
        serde_json::from_str(&std::fs::read_to_string(root.join("drop").join("config.json")).unwrap()).unwrap();
    assert!(saved.drop_last, "the run's config records --drop-last");
    let text = std::fs::read_to_string(root.join("drop").join("metrics.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    // One batch of 6 an epoch (the seventh image left out): accuracies are k/6.
    for line in text.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let acc = m["train_accuracy"].as_f64().unwrap();
        assert!((acc * 6.0 - (acc * 6.0).round()).abs() < 1e-9, "train accuracy {acc} is not k/6: {line}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// `--continue` refuses a run planned with another `--branch-scale` (a field config.json
/// leaves out at its default of 1).
#[test]
fn a_run_with_another_branch_scale_differs() {
    let mut a = train_config(std::path::Path::new("data"), 1);
    let b = a.clone();
    assert!(cnnc::train::config_differences(&a, &b).is_empty());
    a.branch_scale = 0.0;
    assert_eq!(cnnc::train::config_differences(&b, &a), ["branch_scale: 1.0 in the run, 0.0 here"]);
    assert_eq!(cnnc::train::config_differences(&a, &b), ["branch_scale: 0.0 in the run, 1.0 here"]);
}

/// The probe of a graph: a row per weight node, join and BatchNorm, and on a small
/// residual network the measured second moments near the plan's predictions, forward
/// and backward (the analysis is exact in expectation up to its mean-field
/// approximations; 24 draws).
#[test]
fn the_probe_of_a_graph_measures_what_the_plan_predicts() {
    let g = spec(
        "network P\ninput 4x8x8\nconv(3/p1) -> 8, relu\n\
         + (conv(3/p1) -> 8, relu, conv(3/p1) -> 8)\n\
         relu, conv(3/s2/p1) -> 8, batchnorm, relu, global_avgpool, flatten, linear -> 4\n",
    );
    // The plan counts what BatchNorm's batch mean removes from the gradient at batch 4.
    let plan = cnnc::plan_graph(&g, GraphRequest { batch: Some(4), ..req(Mode::Forward) }).unwrap();
    let opts = cnnc::probe::ProbeOptions { draws: 24, batch: 4, seed: 1 };
    let report = cnnc::probe::probe_graph(&g, &plan, opts, &Device::Cpu).unwrap();
    let kinds: Vec<&str> = report.layers.iter().map(|l| l.kind.as_deref().unwrap()).collect();
    assert_eq!(kinds, ["conv", "conv", "conv", "add", "conv", "batchnorm", "linear"]);
    // Within 10 % and three standard errors of the draws.
    let near = |s: &cnnc::probe::Stat, p: f64| (s.mean - p).abs() <= 0.1 * p + 3.0 * s.stderr;
    for l in &report.layers {
        assert!(
            near(&l.measured_forward, l.predicted_forward) && near(&l.measured_backward, l.predicted_backward),
            "{}:\n{}",
            l.name,
            report.table()
        );
    }
}

/// Attention and resampling nodes of shapes their definitions do not allow (a graph the
/// plan of a well-formed one is given with) are errors naming the node, not panics.
#[test]
fn malformed_attention_and_resample_nodes_are_errors_naming_them() {
    let good = attention_ops();
    let plan = cnnc::plan_graph(&good, req(Mode::Forward)).unwrap();
    let build = |g: &Graph| GraphModel::new(g, &plan, 0, &Device::Cpu, DType::F64).map(|_| ()).unwrap_err().to_string();
    // 12 channels are not 5 groups of a radix of 2.
    let mut g = good.clone();
    g.nodes[2].op = Op::RadixSoftmax { radix: 2, groups: 5 };
    let err = build(&g);
    assert!(err.contains("node 2 `n2` (radix softmax)") && err.contains("a radix softmax of 2 × 5 groups over (12,1,1)"), "{err}");
    // A swap of a value of height 4.
    let mut g = good.clone();
    g.nodes[8].inputs = vec![ValueId(1)];
    let err = build(&g);
    assert!(err.contains("node 8 `n8` (swap)") && err.contains("height 1"), "{err}");
    // A resampling of a vector.
    let mut g = good;
    let r = ir::Resample { linear: true, transform: ir::CoordTransform::HalfPixel, nearest: ir::NearestMode::Floor, scale: [1.0, 1.0] };
    let last = g.nodes.len() - 1;
    g.nodes.push(Node {
        op: Op::Resample(r),
        inputs: vec![ValueId(last + 1)],
        output: Shape::Image { c: 3, h: 1, w: 1 },
        name: "up".into(),
        params: None,
        origin: Origin::OnnxNode("up".into()),
    });
    let err = build(&g);
    assert!(err.contains("`up` (resample)") && err.contains("resamples images, not (3) → (3,1,1)"), "{err}");
}

/// A batch of the wrong shape, and BatchNorm in training with one value per channel, are
/// errors naming what is wrong.
#[test]
fn bad_batches_are_clear_errors() {
    let g = spec("network E\ninput 3x4x4\nconv(3/p1) -> 4, batchnorm, relu, global_avgpool, flatten, linear -> 2\n");
    let m = model_of(&g, 0);
    let err = m.forward(&Tensor::zeros((2, 3, 5, 4), DType::F64, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("the input batch has shape [2, 3, 5, 4]; the network takes (N, (3,4,4))"), "{err}");
    let g = spec("network E\ninput 3x1x1\nconv(1) -> 4, batchnorm, relu, flatten, linear -> 2\n");
    let m = model_of(&g, 0);
    let err = m.forward(&Tensor::zeros((1, 3, 1, 1), DType::F64, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("(batchnorm): BatchNorm needs more than one value per channel in training (batch of 1, 1 position(s) a sample;"),
        "{err}"
    );
    assert!(err.contains("--drop-last"), "{err}");
    m.set_training(false);
    assert!(m.forward(&Tensor::zeros((1, 3, 1, 1), DType::F64, &Device::Cpu).unwrap()).is_ok(), "evaluation takes a batch of 1");
}

fn cnnc_cli(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `cnnc train` and `cnnc probe` take a graph (a residual block with BatchNorm) and
/// `--branch-scale`: the run's plan and config record it, the checkpoint holds the running
/// statistics; the probe reports the join and the BatchNorms.
#[test]
fn the_cli_trains_and_probes_a_graph() {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/train/tiny_residual.cnn");
    let root = std::env::temp_dir().join(format!("cnnc-graph-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    cnnc::train::data::synthesize(&root.join("data"), 4, 6, 16, 2).unwrap();
    let run = root.join("run");
    let os = |s: &str| std::ffi::OsString::from(s);
    let args = [os("train"), spec.clone().into(), os("--data"), root.join("data").into(), os("--epochs"), os("1")];
    let more = [os("--batch-size"), os("6"), os("--branch-scale"), os("0"), os("--quiet"), os("--out"), run.clone().into()];
    let all: Vec<&std::ffi::OsStr> = args.iter().chain(&more).map(|s| s.as_os_str()).collect();
    let (ok, out, err) = cnnc_cli(&all);
    assert!(ok, "{err}");
    assert!(out.contains("epoch 1: train loss"), "{out}");
    let plan = cnnc::plan::Plan::read(&run.join("plan.json")).unwrap();
    assert_eq!((plan.format.as_str(), plan.branch_scale), ("cnnc-plan/2", Some(0.0)));
    let (config, _, epochs) = cnnc::train::run_config(&run).unwrap();
    assert_eq!((config.branch_scale, epochs), (0.0, 1));
    let names: Vec<String> = cnnc::train::checkpoint_weights(&run).unwrap().into_iter().map(|(n, _)| n).collect();
    for n in ["buffer.bn1.running_var", "buffer.block.bn2.running_mean", "param.block.bn2.weight", "momentum.fc.weight"] {
        assert!(names.iter().any(|m| m == n), "{n} not in {names:?}");
    }
    let (ok, out, err) =
        cnnc_cli(&[os("probe").as_os_str(), spec.as_os_str(), os("--draws").as_os_str(), os("2").as_os_str(), os("--json").as_os_str()]);
    assert!(ok, "{err}");
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = reports[0]["layers"].as_array().unwrap().iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["conv", "batchnorm", "conv", "batchnorm", "conv", "batchnorm", "add", "linear"]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// torch's exports of efficient channel, global-context and split attention
/// (`tests/data/onnx/attn`, both exporters): every node against the naive loop, the
/// gradients against finite differences.
#[test]
fn torchs_attention_blocks_match_the_naive_loop() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["eca", "gc", "split"] {
        for exporter in ["ts", "dynamo"] {
            let path = format!("tests/data/onnx/attn/{name}.{exporter}.onnx");
            let g = cnnc::load(&root.join(&path), InputSize::Declared).unwrap_or_else(|e| panic!("{e}")).graph;
            let attention = g.nodes.iter().filter(|n| {
                matches!(
                    n.op,
                    Op::RadixSoftmax { .. } | Op::AddBroadcast | Op::SoftmaxPositions | Op::AttentionPool | Op::SwapChannelsWidth
                )
            });
            assert!(attention.count() > 0, "{path}");
            check_nodes(&g, 2, 3);
            check_gradients(&g, 2);
        }
    }
}
