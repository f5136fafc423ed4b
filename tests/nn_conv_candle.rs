//! candle's `conv2d` path (`ConvSpec::apply_candle`: what devices other than the CPU run)
//! with a stride or dilation that differs between the axes, which candle's conv2d does not
//! take (the dilation is written into the kernel, the stride is subsampled): the same
//! values and gradients as cnnc's own conv op, on the CPU.
#![cfg(feature = "train")]

use candle_core::{Device, Tensor, Var};
use cnnc::nn::conv::ConvSpec;

/// (stride, dilation, pad [top, left, bottom, right], groups, kernel [h, w]).
type Case = ([usize; 2], [usize; 2], [usize; 4], usize, [usize; 2]);

#[test]
fn per_axis_stride_and_dilation_match_cnncs_conv() {
    let cases: &[Case] = &[
        // Equal strides, but the rows and columns leave different remainders (candle's
        // own backward fails on this).
        ([2, 2], [1, 1], [1, 1, 1, 1], 1, [2, 3]),
        ([2, 1], [1, 1], [1, 1, 1, 1], 1, [3, 3]),
        ([1, 3], [1, 1], [0, 2, 1, 0], 2, [3, 2]),
        ([2, 3], [1, 1], [1, 1, 1, 1], 1, [3, 3]),
        ([4, 2], [1, 1], [1, 0, 2, 1], 1, [2, 3]),
        ([1, 1], [2, 1], [2, 1, 2, 1], 1, [3, 3]),
        ([1, 1], [1, 3], [0, 3, 0, 3], 2, [2, 3]),
        ([2, 1], [1, 2], [1, 2, 1, 2], 1, [3, 3]),
        ([3, 2], [2, 3], [2, 3, 1, 0], 2, [3, 2]),
    ];
    let dev = Device::Cpu;
    for &(stride, dilation, pad, groups, [kh, kw]) in cases {
        let spec = ConvSpec { stride, dilation, pad, groups };
        let (n, c, o, h, w) = (2, 4, 6, 13, 11);
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (o, c / groups, kh, kw), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, o, &dev).unwrap()).unwrap();
        let ours = spec.apply(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor())).unwrap();
        let theirs = spec.apply_candle(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor())).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{spec:?}");
        let r = Tensor::randn(0f64, 1.0, ours.shape(), &dev).unwrap();
        let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let diff = |a: &Tensor, b: &Tensor| flat(a).iter().zip(flat(b)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(diff(&ours, &theirs) < 1e-10, "{spec:?}: forward differs by {}", diff(&ours, &theirs));
        for (name, v) in [("x", &x), ("w", &wt), ("b", &b)] {
            let (a, z) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(diff(a, z) < 1e-10, "{spec:?}: gradient of {name} differs by {}", diff(a, z));
        }
    }
}

/// Whole models on candle's conv path (`Kernels::Candle`, what CUDA runs) against cnnc's
/// kernels: outputs and every parameter gradient, on nets with non-square inputs (whose
/// rows and columns leave different remainders), groups, dilation, per-axis stride and
/// dilation, asymmetric padding and every pool (tests/nn_cuda.rs runs them on CUDA).
#[test]
fn models_on_candles_conv_path_match_cnncs_kernels() {
    use cnnc::analyze::{Mode, Options};
    use cnnc::nn::{Kernels, Model};
    let nets = [
        "network A\ninput 4x11x9\n\
         conv(3/pad_top=1/pad_bottom=0/pad_left=2/pad_right=1, groups=2) -> 6, relu, maxpool(3/s2/p1)\n\
         conv(kernel=3, pad=2, dilation=2) -> 5, leaky_relu(0.1), avgpool(2/s1/p1)\n\
         conv(3/s2/p1x0, groups=5, nobias) -> 5, tanh, avgpool(3/s2/p1/exclude_pad)\n\
         flatten\nlinear -> 7, gelu\nlinear -> 3\n",
        "network B\ninput 3x10x12\n\
         conv(5x3/p2x1) -> 4, sigmoid, maxpool(2/s2/ceil)\n\
         conv(1) -> 6, silu, avgpool(3/s2/p1/ceil)\n\
         conv(3/p1, groups=3) -> 6, relu, global_avgpool\nlinear -> 4\n",
        "network E\ninput 2x11x9\nconv(3/s2x1/p1) -> 4, relu\nconv(3x2/d1x2/p1x0) -> 3, tanh\nflatten\nlinear -> 2\n",
    ];
    for src in nets {
        let net = cnnc::Source::new("test.cnn", src).network().unwrap_or_else(|e| panic!("{e}"));
        let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
        let mut dims = vec![3];
        dims.extend(net.input.dims().into_iter().map(|d| d as usize));
        let x = Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap();
        let run = |kernels: Kernels| {
            let m = Model::new(&net, &plan, 3, &Device::Cpu, candle_core::DType::F64).unwrap().with_kernels(kernels);
            let out = m.forward(&x).unwrap();
            let grads = m.backward(&out.sqr().unwrap().sum_all().unwrap()).unwrap();
            let mut all = vec![out.flatten_all().unwrap().to_vec1::<f64>().unwrap()];
            for (_, v) in m.named_vars() {
                all.push(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap());
            }
            all
        };
        let (ours, theirs) = (run(Kernels::Cnnc), run(Kernels::Candle));
        for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let d = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            let scale = a.iter().map(|v| v.abs()).fold(1e-30, f64::max);
            assert!(
                d / scale < 1e-10,
                "{}: {} differs by {d:e}",
                net.name,
                if k == 0 { "the output".into() } else { format!("gradient {k}") }
            );
        }
    }
}
