//! Layer 6 (tools): the scoring model's one input tensor as the Open Inference Protocol (V2)
//! carries it, whichever way it came (REST JSON, gRPC typed contents, gRPC raw bytes): its data
//! type, its shape read as rows × features, and the checks both protocols share. Every error is
//! the message the client gets (REST 400, gRPC `INVALID_ARGUMENT`).

/// The one model a scoring server serves, under the V2 protocol.
pub(crate) const MODEL_NAME: &str = "scorer";
/// The model's one input: rows of features.
pub(crate) const INPUT: &str = "input";
/// The model's one output: a prediction per row.
pub(crate) const OUTPUT: &str = "predictions";
/// The most rows one request may carry (the answer is 8 bytes a row).
pub(crate) const MAX_ROWS: usize = 1 << 20;

/// The numeric data types the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    Fp32,
    Fp64,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
}

const ALL: [DataType; 10] = [
    DataType::Fp32,
    DataType::Fp64,
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Uint8,
    DataType::Uint16,
    DataType::Uint32,
    DataType::Uint64,
];

impl DataType {
    /// The V2 name of a data type, like `FP64`.
    pub(crate) fn parse(name: &str) -> Result<DataType, String> {
        ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|d| d.name()).collect();
            format!(
                "input `{INPUT}`: datatype `{name}` is not supported; the model takes {}",
                names.join(", ")
            )
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
        }
    }

    /// Bytes per element in `raw_input_contents`.
    pub(crate) fn size(self) -> usize {
        match self {
            DataType::Int8 | DataType::Uint8 => 1,
            DataType::Int16 | DataType::Uint16 => 2,
            DataType::Fp32 | DataType::Int32 | DataType::Uint32 => 4,
            DataType::Fp64 | DataType::Int64 | DataType::Uint64 => 8,
        }
    }

    pub(crate) fn is_integer(self) -> bool {
        !matches!(self, DataType::Fp32 | DataType::Fp64)
    }

    /// One little-endian element of `raw_input_contents` (`bytes` is `size()` long).
    fn decode(self, b: &[u8]) -> Option<f64> {
        Some(match self {
            DataType::Fp32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
            DataType::Fp64 => f64::from_le_bytes(b.try_into().ok()?),
            DataType::Int8 => f64::from(i8::from_le_bytes(b.try_into().ok()?)),
            DataType::Int16 => f64::from(i16::from_le_bytes(b.try_into().ok()?)),
            DataType::Int32 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
            DataType::Int64 => i64::from_le_bytes(b.try_into().ok()?) as f64,
            DataType::Uint8 => f64::from(u8::from_le_bytes(b.try_into().ok()?)),
            DataType::Uint16 => f64::from(u16::from_le_bytes(b.try_into().ok()?)),
            DataType::Uint32 => f64::from(u32::from_le_bytes(b.try_into().ok()?)),
            DataType::Uint64 => u64::from_le_bytes(b.try_into().ok()?) as f64,
        })
    }
}

/// A shape as the client wrote it, like `[2, 3]`.
pub(crate) fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// A checked shape: `[rows, features]`, or `[features]` for one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The dimensions as given (one or two, none negative).
    pub(crate) dims: Vec<usize>,
    pub(crate) rows: usize,
    pub(crate) features: usize,
    /// rows × features.
    pub(crate) elements: usize,
}

impl Shape {
    pub(crate) fn parse(shape: &[i64]) -> Result<Shape, String> {
        let text = shape_text(shape);
        let mut dims = Vec::with_capacity(shape.len());
        for &d in shape {
            dims.push(usize::try_from(d).map_err(|_| {
                format!("input `{INPUT}`: shape {text} has a negative dimension, {d}")
            })?);
        }
        let (rows, features) = match dims[..] {
            [f] => (1, f),
            [n, f] => (n, f),
            _ => {
                return Err(format!(
                    "input `{INPUT}`: shape {text} has {} dimensions; expected [rows, features] \
                     or [features]",
                    dims.len()
                ));
            }
        };
        if rows > MAX_ROWS {
            return Err(format!(
                "input `{INPUT}`: shape {text} has {rows} rows; at most {MAX_ROWS} are taken at once"
            ));
        }
        let elements = rows.checked_mul(features).ok_or_else(|| {
            format!("input `{INPUT}`: shape {text} holds more elements than can be sent")
        })?;
        Ok(Shape {
            dims,
            rows,
            features,
            elements,
        })
    }

    pub(crate) fn text(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(usize::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The input read: rows × features, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    rows: usize,
    features: usize,
    values: Vec<f64>,
}

impl Batch {
    /// `values` (row-major) in `shape`; their count must be the shape's.
    pub(crate) fn new(shape: &Shape, values: Vec<f64>) -> Result<Batch, String> {
        if values.len() != shape.elements {
            return Err(format!(
                "input `{INPUT}`: shape {} holds {} elements but the data has {}",
                shape.text(),
                shape.elements,
                values.len()
            ));
        }
        Ok(Batch {
            rows: shape.rows,
            features: shape.features,
            values,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// `score`'s prediction for every row.
    pub(crate) fn predict(&self, score: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        if self.features == 0 {
            return (0..self.rows).map(|_| score(&[])).collect();
        }
        self.values.chunks(self.features).map(score).collect()
    }
}

/// The elements of `raw_input_contents` for one input: `bytes` must hold exactly the shape's
/// elements of `datatype`, little-endian. `what` names the field in the message.
pub(crate) fn decode_raw(
    datatype: DataType,
    shape: &Shape,
    bytes: &[u8],
    what: &str,
) -> Result<Vec<f64>, String> {
    let size = datatype.size();
    let want = shape.elements.checked_mul(size);
    if want != Some(bytes.len()) {
        return Err(format!(
            "{what} has {} bytes; shape {} of {} takes {} ({} elements of {size} bytes)",
            bytes.len(),
            shape.text(),
            datatype.name(),
            want.map_or_else(|| "more".to_string(), |w| w.to_string()),
            shape.elements,
        ));
    }
    bytes
        .chunks_exact(size)
        .map(|b| datatype.decode(b))
        .collect::<Option<Vec<f64>>>()
        .ok_or_else(|| format!("{what}: cannot read {} elements", datatype.name()))
}

/// The index of the one input, which must be named `input`.
pub(crate) fn the_input<'a>(
    names: impl ExactSizeIterator<Item = &'a str>,
) -> Result<usize, String> {
    let n = names.len();
    let names: Vec<&str> = names.collect();
    match names[..] {
        [] => Err(format!(
            "the request has no inputs; the model takes one, `{INPUT}` ([rows, features])"
        )),
        [name] if name == INPUT => Ok(0),
        [name] => Err(format!(
            "unknown input `{name}`; the model takes one input, `{INPUT}`"
        )),
        _ => Err(format!(
            "the request has {n} inputs ({}); the model takes one, `{INPUT}`",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The requested outputs, if any, may only name `predictions`.
pub(crate) fn check_outputs<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    for name in names {
        if name != OUTPUT {
            return Err(format!(
                "unknown output `{name}`; the model's one output is `{OUTPUT}`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_is_rows_by_features_or_one_row() {
        let s = Shape::parse(&[2, 3]).unwrap();
        assert_eq!((s.rows, s.features, s.elements), (2, 3, 6));
        let s = Shape::parse(&[4]).unwrap();
        assert_eq!((s.rows, s.features, s.elements), (1, 4, 4));
        assert_eq!(s.text(), "[4]");
    }

    #[test]
    fn wrong_shapes_are_named() {
        assert_eq!(
            Shape::parse(&[2, -1]).unwrap_err(),
            "input `input`: shape [2, -1] has a negative dimension, -1"
        );
        assert_eq!(
            Shape::parse(&[]).unwrap_err(),
            "input `input`: shape [] has 0 dimensions; expected [rows, features] or [features]"
        );
        assert!(
            Shape::parse(&[1, 2, 3])
                .unwrap_err()
                .contains("shape [1, 2, 3] has 3 dimensions")
        );
        assert!(
            Shape::parse(&[i64::MAX, 2])
                .unwrap_err()
                .contains("rows; at most 1048576")
        );
        assert!(
            Shape::parse(&[3, i64::MAX])
                .unwrap_err()
                .contains("more elements than can be sent")
        );
    }

    #[test]
    fn a_batch_needs_the_shapes_element_count() {
        let s = Shape::parse(&[2, 3]).unwrap();
        assert_eq!(
            Batch::new(&s, vec![1.0; 5]).unwrap_err(),
            "input `input`: shape [2, 3] holds 6 elements but the data has 5"
        );
        let b = Batch::new(&s, vec![1.0, 2.0, 3.0, 0.0, 0.0, 2.0]).unwrap();
        assert_eq!(
            b.predict(|r| super::super::Model::V1.predict(r)),
            vec![4.0, 2.0]
        );
        assert_eq!(b.rows(), 2);
    }

    #[test]
    fn rows_without_features_predict_the_intercept() {
        let b = Batch::new(&Shape::parse(&[3, 0]).unwrap(), vec![]).unwrap();
        assert_eq!(
            b.predict(|r| super::super::Model::V1.predict(r)),
            vec![1.0; 3]
        );
        let b = Batch::new(&Shape::parse(&[0, 5]).unwrap(), vec![]).unwrap();
        assert!(b.predict(|r| super::super::Model::V2.predict(r)).is_empty());
    }

    #[test]
    fn raw_contents_are_little_endian_elements() {
        let s = Shape::parse(&[1, 3]).unwrap();
        let fp64: Vec<u8> = [1.0f64, 2.0, 3.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            decode_raw(DataType::Fp64, &s, &fp64, "raw").unwrap(),
            vec![1.0, 2.0, 3.5]
        );
        let fp32: Vec<u8> = [1.5f32, -2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            decode_raw(DataType::Fp32, &s, &fp32, "raw").unwrap(),
            vec![1.5, -2.0, 3.0]
        );
        let i32s: Vec<u8> = [-1i32, 7, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            decode_raw(DataType::Int32, &s, &i32s, "raw").unwrap(),
            vec![-1.0, 7.0, 9.0]
        );
        let i64s: Vec<u8> = [5i64, 0, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            decode_raw(DataType::Int64, &s, &i64s, "raw").unwrap(),
            vec![5.0, 0.0, -3.0]
        );
        assert_eq!(
            decode_raw(DataType::Uint8, &s, &[1, 2, 255], "raw").unwrap(),
            vec![1.0, 2.0, 255.0]
        );
    }

    #[test]
    fn raw_contents_of_the_wrong_length_are_refused() {
        let s = Shape::parse(&[2, 3]).unwrap();
        assert_eq!(
            decode_raw(DataType::Fp64, &s, &[0; 40], "raw_input_contents[0]").unwrap_err(),
            "raw_input_contents[0] has 40 bytes; shape [2, 3] of FP64 takes 48 (6 elements of 8 bytes)"
        );
        assert!(decode_raw(DataType::Fp32, &s, &[0; 25], "raw").is_err());
    }

    #[test]
    fn data_types_by_their_v2_names() {
        for d in ALL {
            assert_eq!(DataType::parse(d.name()), Ok(d));
        }
        assert!(DataType::Int64.is_integer() && !DataType::Fp32.is_integer());
        let e = DataType::parse("BYTES").unwrap_err();
        assert!(
            e.starts_with(
                "input `input`: datatype `BYTES` is not supported; the model takes FP32, FP64, INT8"
            ),
            "{e}"
        );
    }

    #[test]
    fn exactly_one_input_named_input() {
        assert_eq!(the_input(["input"].into_iter()), Ok(0));
        assert!(the_input([].into_iter()).unwrap_err().contains("no inputs"));
        assert_eq!(
            the_input(["x"].into_iter()).unwrap_err(),
            "unknown input `x`; the model takes one input, `input`"
        );
        assert_eq!(
            the_input(["input", "x"].into_iter()).unwrap_err(),
            "the request has 2 inputs (`input`, `x`); the model takes one, `input`"
        );
        assert!(check_outputs(["predictions"].into_iter()).is_ok());
        assert_eq!(
            check_outputs(["predictions", "probabilities"].into_iter()).unwrap_err(),
            "unknown output `probabilities`; the model's one output is `predictions`"
        );
    }
}
