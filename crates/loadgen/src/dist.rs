//! Random distributions, each given by its mean and standard deviation so that every shape
//! is set the same way (`lognormal:0.02:0.01` is a log-normal with mean 20 ms and stdev
//! 10 ms), and checked against exactly those two numbers in the tests.

use std::{fmt, str::FromStr};

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal, Normal, Pareto, Uniform};

use crate::Error;

/// The shape of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Memoryless; its stdev is its mean (a Poisson process when used for gaps).
    Exponential,
    /// Flat on `mean ± √3·stdev`.
    Uniform,
    /// Gaussian; negative draws are drawn again, so keep stdev well below the mean.
    Normal,
    /// Log-normal with this mean and stdev.
    Lognormal,
    /// Always the mean.
    Constant,
    /// Pareto (heavy tail) with this mean and stdev; shape `1 + √(1 + mean²/stdev²)` > 2.
    Pareto,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Self::Exponential => "exponential",
            Self::Uniform => "uniform",
            Self::Normal => "normal",
            Self::Lognormal => "lognormal",
            Self::Constant => "constant",
            Self::Pareto => "pareto",
        }
    }
}

impl FromStr for Shape {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        <Self as clap::ValueEnum>::from_str(text, true).map_err(|_| {
            Error::Invalid(format!(
                "unknown distribution `{text}`; use exponential, uniform, normal, lognormal, constant or pareto"
            ))
        })
    }
}

/// A distribution of non-negative values with a given mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dist {
    shape: Shape,
    mean: f64,
    stdev: f64,
}

impl Dist {
    /// Checks that the shape can have this mean and stdev with non-negative values.
    /// `stdev` is ignored for `exponential` (always the mean) and `constant` (always 0).
    pub fn new(shape: Shape, mean: f64, stdev: f64) -> Result<Self, Error> {
        let name = shape.name();
        if !mean.is_finite() || mean < 0.0 {
            return Err(Error::Invalid(format!(
                "{name}: the mean must be a non-negative number, got {mean}"
            )));
        }
        if !stdev.is_finite() || stdev < 0.0 {
            return Err(Error::Invalid(format!(
                "{name}: the stdev must be a non-negative number, got {stdev}"
            )));
        }
        let stdev = match shape {
            Shape::Exponential => mean,
            Shape::Constant => 0.0,
            _ => stdev,
        };
        match shape {
            Shape::Exponential | Shape::Lognormal | Shape::Pareto if mean <= 0.0 => {
                return Err(Error::Invalid(format!(
                    "{name}: the mean must be greater than zero"
                )));
            }
            Shape::Uniform if mean - 3f64.sqrt() * stdev < 0.0 => {
                return Err(Error::Invalid(format!(
                    "uniform: mean {mean} and stdev {stdev} reach below zero (need stdev <= mean/√3)"
                )));
            }
            Shape::Pareto if stdev <= 0.0 => {
                return Err(Error::Invalid(
                    "pareto: the stdev must be greater than zero".into(),
                ));
            }
            _ => {}
        }
        Ok(Self { shape, mean, stdev })
    }

    /// A log-normal with this mean whose logarithm has standard deviation `sigma` (the
    /// spread of job sizes: 1.5 spans about three orders of magnitude between the 0.1st
    /// and the 99.9th percentile). Its stdev is `mean·√(e^(σ²) − 1)`; its median
    /// `mean·e^(−σ²/2)`.
    pub fn lognormal_sigma(mean: f64, sigma: f64) -> Result<Self, Error> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(Error::Invalid(format!(
                "lognormal: sigma must be a non-negative number, got {sigma}"
            )));
        }
        Self::new(
            Shape::Lognormal,
            mean,
            mean * (sigma * sigma).exp_m1().sqrt(),
        )
    }

    /// Always `value`.
    pub fn constant(value: f64) -> Result<Self, Error> {
        Self::new(Shape::Constant, value, 0.0)
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The stdev the samples have (the mean for `exponential`, 0 for `constant`).
    pub fn stdev(&self) -> f64 {
        self.stdev
    }

    /// The same shape with mean and stdev multiplied by `factor` (> 0).
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            shape: self.shape,
            mean: self.mean * factor,
            stdev: self.stdev * factor,
        }
    }

    /// A sampler for this distribution.
    pub fn sampler(&self) -> Sampler {
        let (mean, stdev) = (self.mean, self.stdev);
        let inner = match self.shape {
            Shape::Constant => Inner::Constant(mean),
            _ if stdev == 0.0 && self.shape != Shape::Exponential => Inner::Constant(mean),
            Shape::Exponential => match Exp::new(1.0 / mean) {
                Ok(exp) => Inner::Exponential(exp),
                Err(_) => Inner::Constant(mean),
            },
            Shape::Uniform => {
                let half = 3f64.sqrt() * stdev;
                match Uniform::new_inclusive(mean - half, mean + half) {
                    Ok(uniform) => Inner::Uniform(uniform),
                    Err(_) => Inner::Constant(mean),
                }
            }
            Shape::Normal => match Normal::new(mean, stdev) {
                Ok(normal) => Inner::Normal(normal),
                Err(_) => Inner::Constant(mean),
            },
            Shape::Lognormal => {
                let sigma2 = (1.0 + (stdev / mean).powi(2)).ln();
                match LogNormal::new(mean.ln() - sigma2 / 2.0, sigma2.sqrt()) {
                    Ok(lognormal) => Inner::Lognormal(lognormal),
                    Err(_) => Inner::Constant(mean),
                }
            }
            Shape::Pareto => {
                let alpha = 1.0 + (1.0 + (mean / stdev).powi(2)).sqrt();
                let scale = mean * (alpha - 1.0) / alpha;
                match Pareto::new(scale, alpha) {
                    Ok(pareto) => Inner::Pareto(pareto),
                    Err(_) => Inner::Constant(mean),
                }
            }
        };
        Sampler(inner)
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Constant | Shape::Exponential => {
                write!(f, "{}:{}", self.shape.name(), self.mean)
            }
            _ => write!(f, "{}:{}:{}", self.shape.name(), self.mean, self.stdev),
        }
    }
}

/// `SHAPE:MEAN[:STDEV]` (`lognormal:512:256`, `exponential:0.01`) or a bare number (constant).
impl FromStr for Dist {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let number = |part: &str| {
            part.trim().parse::<f64>().map_err(|_| {
                Error::Invalid(format!(
                    "`{text}`: `{part}` is not a number; use SHAPE:MEAN[:STDEV], e.g. lognormal:512:128, or a bare number"
                ))
            })
        };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [value] => Self::constant(number(value)?),
            [shape, mean] => Self::new(shape.parse()?, number(mean)?, 0.0),
            [shape, mean, stdev] => Self::new(shape.parse()?, number(mean)?, number(stdev)?),
            _ => Err(Error::Invalid(format!(
                "`{text}` is not a distribution; use SHAPE:MEAN[:STDEV], e.g. lognormal:512:128"
            ))),
        }
    }
}

/// Draws from a [`Dist`].
#[derive(Debug, Clone, Copy)]
pub struct Sampler(Inner);

#[derive(Debug, Clone, Copy)]
enum Inner {
    Constant(f64),
    Exponential(Exp<f64>),
    Uniform(Uniform<f64>),
    Normal(Normal<f64>),
    Lognormal(LogNormal<f64>),
    Pareto(Pareto<f64>),
}

impl Sampler {
    /// One non-negative value.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match &self.0 {
            Inner::Constant(value) => *value,
            Inner::Exponential(d) => d.sample(rng),
            Inner::Uniform(d) => d.sample(rng).max(0.0),
            Inner::Normal(d) => {
                // Redraw negatives (a truncated normal); bounded in case stdev >> mean.
                for _ in 0..64 {
                    let value = d.sample(rng);
                    if value >= 0.0 {
                        return value;
                    }
                }
                0.0
            }
            Inner::Lognormal(d) => d.sample(rng),
            Inner::Pareto(d) => d.sample(rng),
        }
    }
}

#[cfg(test)]
mod tests;
