//! Reading and writing the safetensors format (a JSON header and raw little-endian tensors).
//! Small enough to implement here; it keeps weight files inspectable by every ML toolkit.

use std::collections::BTreeMap;

/// A tensor read from or written to a safetensors file, always as `f32` in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

/// A whole safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafeTensors {
    pub tensors: BTreeMap<String, NamedTensor>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("not a safetensors file: {0}")]
    Format(String),
    #[error("tensor {name:?} has unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
    #[error("missing tensor {0:?}")]
    Missing(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

#[derive(serde::Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Storage precision when writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

impl SafeTensors {
    /// Parses a safetensors buffer; F32, F16 and BF16 tensors are converted to `f32`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SafetensorsError> {
        let fmt = |m: &str| SafetensorsError::Format(m.to_owned());
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or_else(|| fmt("shorter than 8 bytes"))?;
        let header_end = 8usize
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| fmt("header length beyond end of file"))?;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..header_end]).map_err(|e| fmt(&e.to_string()))?;
        let data = &bytes[header_end..];
        let mut out = Self::default();
        for (name, value) in header {
            if name == "__metadata__" {
                out.metadata = serde_json::from_value(value).map_err(|e| fmt(&e.to_string()))?;
                continue;
            }
            let entry: Entry = serde_json::from_value(value).map_err(|e| fmt(&e.to_string()))?;
            let [start, end] = entry.data_offsets;
            let raw = data
                .get(start..end)
                .filter(|_| start <= end)
                .ok_or_else(|| fmt(&format!("tensor {name} lies outside the data")))?;
            let n: usize = entry.shape.iter().product();
            let values: Vec<f32> = match entry.dtype.as_str() {
                "F32" if raw.len() == n * 4 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
                "F16" if raw.len() == n * 2 => raw
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                "BF16" if raw.len() == n * 2 => raw
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                "F32" | "F16" | "BF16" => {
                    return Err(fmt(&format!(
                        "tensor {name}: size does not match its shape"
                    )));
                }
                other => {
                    return Err(SafetensorsError::Dtype {
                        name,
                        dtype: other.to_owned(),
                    });
                }
            };
            out.tensors
                .insert(name, NamedTensor::new(entry.shape, values));
        }
        Ok(out)
    }

    /// Serialises all tensors (sorted by name) at the given precision.
    pub fn to_bytes(&self, precision: Precision) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(&self.metadata).expect("string map"),
            );
        }
        let mut data = Vec::new();
        for (name, t) in &self.tensors {
            let start = data.len();
            match precision {
                Precision::F32 => data.extend(t.data.iter().flat_map(|v| v.to_le_bytes())),
                Precision::F16 => data.extend(
                    t.data
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
                ),
            }
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": if precision == Precision::F32 { "F32" } else { "F16" },
                    "shape": t.shape,
                    "data_offsets": [start, data.len()],
                }),
            );
        }
        let mut json = serde_json::to_vec(&header).expect("json");
        // Pad the header so the data starts 8-byte aligned, as the reference writer does.
        while !(8 + json.len()).is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + json.len() + data.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&data);
        out
    }

    /// Removes and returns a tensor, checking its shape.
    pub fn take(
        &mut self,
        name: &str,
        expected: &[usize],
    ) -> Result<NamedTensor, SafetensorsError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| SafetensorsError::Missing(name.to_owned()))?;
        if t.shape != expected {
            return Err(SafetensorsError::Shape {
                name: name.to_owned(),
                found: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32_and_f16() {
        let mut st = SafeTensors::default();
        st.tensors.insert(
            "w".into(),
            NamedTensor::new(vec![2, 3], vec![0.5, -1.0, 2.0, 3.25, 0.0, 1e-3]),
        );
        st.tensors
            .insert("b".into(), NamedTensor::new(vec![1], vec![7.0]));
        st.metadata.insert("source".into(), "test".into());
        let back = SafeTensors::parse(&st.to_bytes(Precision::F32)).unwrap();
        assert_eq!(back, st);
        let half = SafeTensors::parse(&st.to_bytes(Precision::F16)).unwrap();
        let w = &half.tensors["w"];
        assert_eq!(w.shape, [2, 3]);
        assert!((w.data[5] - 1e-3).abs() < 1e-6);
        assert_eq!(w.data[3], 3.25);
    }

    #[test]
    fn corrupt_files_are_errors() {
        assert!(SafeTensors::parse(b"").is_err());
        assert!(SafeTensors::parse(&[255; 16]).is_err());
        let mut st = SafeTensors::default();
        st.tensors
            .insert("w".into(), NamedTensor::new(vec![4], vec![1.0; 4]));
        let bytes = st.to_bytes(Precision::F32);
        assert!(SafeTensors::parse(&bytes[..bytes.len() - 3]).is_err());
        let mut parsed = SafeTensors::parse(&bytes).unwrap();
        assert!(matches!(
            parsed.take("w", &[2, 2]),
            Err(SafetensorsError::Shape { .. })
        ));
        assert!(matches!(
            parsed.take("nope", &[1]),
            Err(SafetensorsError::Missing(_))
        ));
    }
}
