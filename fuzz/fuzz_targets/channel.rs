//! The runtime's parent/child channel: what `Channel::recv` makes of one received message.
//! The other side is the container's init, which runs code the container controls once it
//! has exec'd — or a process that inherited the socket — so any bytes must decode to a
//! message or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_runtime::channel::{decode, Msg};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(data) {
        // Only a failure carries text, and never more than what was received.
        if let Msg::Failed(text) = &msg {
            assert!(text.len() <= 3 * data.len(), "text grew beyond the message");
        }
    }
});
