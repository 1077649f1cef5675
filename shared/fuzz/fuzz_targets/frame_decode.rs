//! Any bytes fed to the frame decoder give a message, "need more bytes" or an error;
//! never a panic, never a read past the announced length. A decoded message encodes
//! again to a frame that decodes to the same message.
#![no_main]

use dynserv_shared::frame::{decode, encode, MAX_FRAME_LEN};
use dynserv_shared::proto::{AgentControl, EnrollRequest, FromAgent, ServerControl, ToAgent};
use libfuzzer_sys::fuzz_target;

fn check<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(Some((message, used))) = decode::<T>(data) {
        assert!(used >= 4 && used <= data.len() && used - 4 <= MAX_FRAME_LEN);
        let again = encode(&message).expect("a decoded message encodes");
        let (round, _) = decode::<T>(&again)
            .expect("re-encoded frame decodes")
            .expect("whole");
        assert_eq!(round, message);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ToAgent>(data);
    check::<FromAgent>(data);
    check::<AgentControl>(data);
    check::<ServerControl>(data);
    check::<EnrollRequest>(data);
});
