//! Classification heads and the small CNN trained from scratch.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::{Device, Tensor};

/// Dropout + linear layer: `[batch, features]` → `[batch, classes]` logits.
#[derive(Module, Debug)]
pub struct Head {
    pub dropout: Dropout,
    pub fc: Linear,
}

impl Head {
    pub fn new(features: usize, classes: usize, dropout: f64, device: &Device) -> Self {
        Self {
            dropout: DropoutConfig::new(dropout).init(),
            fc: LinearConfig::new(features, classes).init(device),
        }
    }

    /// A head whose weights and bias start at zero: a linear probe is a convex problem, so
    /// its result then depends on its objective and data only, not on a random draw.
    pub fn zeros(features: usize, classes: usize, dropout: f64, device: &Device) -> Self {
        Self {
            dropout: DropoutConfig::new(dropout).init(),
            fc: LinearConfig::new(features, classes)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
        }
    }

    /// A head with the given weights: `weight[f][c]` multiplies feature `f` for output `c`
    /// (burn's `[d_input, d_output]` layout), `bias[c]` is added to output `c`.
    pub fn from_weights(weight: &[Vec<f64>], bias: &[f64], device: &Device) -> Self {
        use burn::module::Param;
        use burn::tensor::TensorData;
        let features = weight.len();
        let classes = bias.len();
        let flat: Vec<f32> = weight
            .iter()
            .flat_map(|row| {
                assert_eq!(row.len(), classes, "one weight per output in each row");
                row.iter().map(|&w| w as f32)
            })
            .collect();
        let mut head = Self::zeros(features, classes, 0.0, device);
        head.fc.weight = Param::from_tensor(Tensor::<2>::from_data(
            TensorData::new(flat, [features, classes]),
            device,
        ));
        head.fc.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(
                bias.iter().map(|&b| b as f32).collect::<Vec<_>>(),
                [classes],
            ),
            device,
        )));
        head
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc.forward(self.dropout.forward(x))
    }

    /// `½‖W‖²` of the weights (not the bias): the L2 penalty of a probe's objective.
    pub fn half_squared_norm(&self) -> Tensor<1> {
        self.fc.weight.val().powi_scalar(2).sum() * 0.5
    }
}

/// Conv 3×3 + batch norm + ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBlock {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        burn::tensor::activation::relu(self.bn.forward(self.conv.forward(x)))
    }
}

/// A small CNN baseline trained from random initialisation: four conv blocks
/// (32-64-128-128 channels, 2×2 max-pool after the first three), global average pool, head.
///
/// # Shapes
/// `[batch, 3, H, W]` → `[batch, classes]`
#[derive(Module, Debug)]
pub struct SmallCnn {
    pub blocks: Vec<ConvBlock>,
    pub pool: MaxPool2d,
    pub head: Head,
}

impl SmallCnn {
    pub fn new(classes: usize, dropout: f64, device: &Device) -> Self {
        let widths = [3, 32, 64, 128, 128];
        Self {
            blocks: widths
                .windows(2)
                .map(|w| ConvBlock::new(w[0], w[1], device))
                .collect(),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            head: Head::new(128, classes, dropout, device),
        }
    }

    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        let n = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if i + 1 < n {
                x = self.pool.forward(x);
            }
        }
        self.head.forward(x.mean_dims(&[2, 3]).flatten::<2>(1, 3))
    }
}
