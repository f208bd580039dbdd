//! IPFIX itself (RFC 7011, 7012, 6313, 5655, 5103), NetFlow v9 (RFC 3954) and NetFlow v5: headers, sets,
//! templates, the information model, typed values, decoding into columns, encoding, and stream
//! framing. Pure and synchronous: no tokio, no actors, no I/O beyond `Read`/`Write`.

pub mod batch;
pub mod budget;
pub mod decoder;
pub mod encode;
pub mod error;
pub mod framing;
pub mod header;
pub mod model;
pub mod ndjson;
pub mod ndjson_writer;
pub mod netflow_v5;
pub mod plan;
pub mod registry;
pub mod structured;
pub mod template;

pub use batch::{Batch, Column, Span, Value};
pub use budget::{ByteBudget, OverBudget};
pub use decoder::{DecodedMessage, Decoder, DecoderOptions, MissingTemplate, TemplateMap};
pub use encode::{FieldValue, FileWriter, MessageBuilder};
pub use error::WireError;
pub use framing::{Framer, FramingError, MessageReader, MessageSlices};
pub use header::MessageHeader;
pub use model::{DataType, InfoElement, Semantics};
pub use plan::{ColumnType, Plan};
pub use registry::Registry;
pub use template::{FieldSpec, Template, TemplateEvent, TemplateKind, VARLEN};
