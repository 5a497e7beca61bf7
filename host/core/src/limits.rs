//! Per-listener limits on what one peer may make the engine hold: connections, outbound bytes,
//! inbound message size, calls in flight, registrations. Each limit has a default a laptop
//! survives and a `iii-worker-manager` config key (README "Limits"); each refusal is structured.

pub use iii_protocol::codes::{
    FRAME_TOO_LARGE, REGISTRATION_LIMIT_EXCEEDED, TOO_MANY_PENDING_CALLS,
};

/// The limits one worker-socket listener applies to each of its connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    /// Sockets open at once on the listener (workers, channels, telemetry, handshakes).
    pub max_connections: usize,
    /// Bytes queued for one connection before it is disconnected as a slow consumer.
    pub max_outbound_bytes: usize,
    /// Largest inbound WebSocket message, fragmented or not; also the largest frame the engine
    /// sends (the SDKs refuse larger ones).
    pub max_message_bytes: usize,
    /// Largest single inbound WebSocket frame.
    pub max_frame_bytes: usize,
    /// Calls one connection may have in flight, made and served counted apart.
    pub max_pending_calls: usize,
    /// Registration frames buffered before the namespace is known.
    pub max_buffered_registrations: usize,
    /// Bytes of registration frames buffered before the namespace is known.
    pub max_buffered_registration_bytes: usize,
    /// Functions, trigger types and triggers one connection may register.
    pub max_registrations: usize,
    /// Bytes of the registration frames one connection's live registrations came in.
    pub max_registration_bytes: usize,
    /// Bytes a data channel buffers between its writer socket and its reader.
    pub max_channel_buffer_bytes: usize,
    /// How long a data channel waits for its other side before it is reclaimed.
    pub channel_unclaimed_timeout: std::time::Duration,
    /// Malformed-frame warnings logged per connection per window before they are summarised.
    pub malformed_log_burst: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 512,
            max_outbound_bytes: 64 << 20,
            max_message_bytes: 64 << 20,
            max_frame_bytes: 16 << 20,
            max_pending_calls: 10_000,
            max_buffered_registrations: 10_000,
            max_buffered_registration_bytes: 16 << 20,
            max_registrations: 10_000,
            max_registration_bytes: 32 << 20,
            max_channel_buffer_bytes: 8 << 20,
            channel_unclaimed_timeout: std::time::Duration::from_secs(60),
            malformed_log_burst: 10,
        }
    }
}
