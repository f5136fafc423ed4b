//! ReLU with PyTorch's gradient: the input's gradient is the output's where x > 0, and 0
//! where x ≤ 0.
//!
//! Why: candle's `relu` passes the gradient where x ≥ 0, so at x = 0 exactly (a ReLU of
//! a ReLU's output plus a zero-started residual branch, `--branch-scale 0`) it sent the
//! whole gradient where PyTorch sends none: the probe measured 2.0× PyTorch's gradient at
//! the second block of each ResNet stage. One pass forward, one backward (CPU; elsewhere
//! candle's ops with the same mask).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};

/// `max(x, 0)`, differentiable with the mask x > 0.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op1(Relu)
    } else {
        let zero = x.zeros_like()?;
        x.gt(&zero)?.where_cond(x, &zero)
    }
}

/// `max(a + b, 0)` of two tensors of one shape: candle's `a + b` then [`relu`], the same
/// values and gradients, as one op on the CPU (a residual block's join and its ReLU).
///
/// Why: as two ops the sum is one more node of candle's autograd (a zeroed buffer and an
/// add of its gradient, on the calling thread) and candle's add runs on one thread (its
/// pool is one thread beside rayon's, [`super::tune_cpu`]); here both passes split over
/// rayon's threads.
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.device().is_cpu() && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        relu(&(a + b)?)
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu-torch"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add-relu: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        fn run<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
            let zero = T::from_f64(0.0);
            super::par_filled(a.len(), CHUNK, |i, o| {
                for ((o, &a), &b) in o.iter_mut().zip(&a[i * CHUNK..]).zip(&b[i * CHUNK..]) {
                    let s = a + b;
                    o.write(if s > zero { s } else { zero });
                }
            })
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(run(super::contiguous(a, l1, "the first input")?, super::contiguous(b, l2, "the second input")?))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(run(super::contiguous(a, l1, "the first input")?, super::contiguous(b, l2, "the second input")?))
            }
            _ => candle_core::bail!("add-relu: dtypes {:?} and {:?} (f32 or f64, alike)", s1.dtype(), s2.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// Elements a task of the element-wise ops writes.
const CHUNK: usize = 1 << 14;

struct Relu;

fn each<T: WithDType>(v: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    super::par_filled(v.len(), CHUNK, |i, o| {
        o.iter_mut().zip(&v[i * CHUNK..]).for_each(|(o, &x)| {
            o.write(f(x));
        })
    })
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-torch"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(each(super::contiguous(v, layout, "the input")?, |x| if x > 0.0 { x } else { 0.0 })),
            CpuStorage::F64(v) => CpuStorage::F64(each(super::contiguous(v, layout, "the input")?, |x| if x > 0.0 { x } else { 0.0 })),
            other => candle_core::bail!("relu: dtype {:?} is not supported (f32 or f64)", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluGrad)?))
    }
}

/// (y, dy) → dy where y > 0, else 0.
struct ReluGrad;

fn masked<T: WithDType>(y: &[T], g: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    super::par_filled(y.len(), CHUNK, |i, o| {
        for ((o, &y), &g) in o.iter_mut().zip(&y[i * CHUNK..]).zip(&g[i * CHUNK..]) {
            o.write(if y > zero { g } else { zero });
        }
    })
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-torch-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("relu-grad: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => {
                CpuStorage::F32(masked(super::contiguous(y, l1, "the output")?, super::contiguous(g, l2, "the gradient")?))
            }
            (CpuStorage::F64(y), CpuStorage::F64(g)) => {
                CpuStorage::F64(masked(super::contiguous(y, l1, "the output")?, super::contiguous(g, l2, "the gradient")?))
            }
            _ => candle_core::bail!("relu-grad: dtypes {:?} and {:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused join against candle's add and [`relu`]: the same output and the same
    /// gradients of both inputs, bit for bit (zeros included: some sums are exactly 0).
    #[test]
    fn add_relu_is_add_then_relu() {
        let dev = Device::Cpu;
        let shape = (3, 4, 5, 70);
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap();
        // Some exact cancellations: b = −a at every 7th element.
        let av = a.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b0 = Tensor::randn(0f32, 1.0, av.len(), &dev).unwrap().to_vec1::<f32>().unwrap();
        let bv: Vec<f32> = av.iter().zip(&b0).enumerate().map(|(i, (a, b))| if i % 7 == 0 { -a } else { *b }).collect();
        let b = Var::from_vec(bv, shape, &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let ours = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let theirs = relu(&(a.as_tensor() + b.as_tensor()).unwrap()).unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&ours), bits(&theirs));
        let go = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (&theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            assert_eq!(bits(go.get(v.as_tensor()).unwrap()), bits(gt.get(v.as_tensor()).unwrap()));
        }
    }

    #[test]
    fn the_gradient_at_zero_is_zero_as_in_pytorch() {
        let x = Var::from_slice(&[-1.0f32, 0.0, 0.0, 2.0], (4,), &Device::Cpu).unwrap();
        let y = relu(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0, 2.0]);
        let w = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        // torch.relu's backward (threshold_backward): 0 where x ≤ 0. candle's relu gives 2, 3 at the zeros.
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0, 4.0]);
    }
}
