//! The codec of every generated client and server: tonic's prost codec with buffers that
//! start at 1 KiB instead of 8 KiB. A buffer is held for as long as its call lasts, and a
//! manager holds a task session open for every node: with 8 KiB each, a thousand idle
//! sessions held 8 MB of empty buffers. A larger message grows its buffer as before.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first size of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1 << 10;

/// Bytes a streaming call encodes before it yields them to the connection (tonic's default).
const YIELD_BYTES: usize = 32 << 10;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

/// [`tonic_prost::ProstCodec`] with [`BUFFER_BYTES`] buffers (named by `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Compact<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Compact<T, U> {
    fn default() -> Self {
        Compact(PhantomData)
    }
}

impl<T, U> Codec for Compact<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

#[cfg(test)]
mod tests {
    /// The generated clients and servers use [`super::Compact`], not prost's own codec.
    #[test]
    fn the_generated_services_use_the_compact_codec() {
        for generated in [
            include_str!(concat!(env!("OUT_DIR"), "/skep.v1.rs")),
            include_str!(concat!(env!("OUT_DIR"), "/_.rs")),
        ] {
            assert!(generated.contains("crate::api::codec::Compact::default()"));
            assert!(!generated.contains("tonic_prost::ProstCodec::default()"));
        }
    }
}
