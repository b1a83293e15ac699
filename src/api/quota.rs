//! Uploads in flight per token: a token may stream at most [`MAX_UPLOADS_PER_CLIENT`] upload
//! bodies at once, so one client — a runaway CI job, a stolen token — cannot take every
//! connection and disk writer from the others. The limit is per token: others are never
//! affected. Past it, the request gets 429 `TOOMANYREQUESTS`. (A loopback node without tokens
//! has no clients to tell apart and no limit; the connection cap still holds.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::oci::{Error, ErrorCode, Result};

/// Upload requests (`POST`/`PATCH`/`PUT` of blob uploads) one client may have in flight.
pub const MAX_UPLOADS_PER_CLIENT: usize = 32;

#[derive(Default)]
pub(super) struct UploadSlots {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// A taken slot; released on drop.
pub(super) struct UploadSlot {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl UploadSlots {
    /// Take a slot for `client`, or refuse with 429 naming the limit.
    pub(super) fn take(&self, client: &str) -> Result<UploadSlot> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(client.to_owned()).or_insert(0);
        if *count >= MAX_UPLOADS_PER_CLIENT {
            return Err(Error::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{client} already has {MAX_UPLOADS_PER_CLIENT} uploads in progress, the most one client may have; retry when one finishes"
                ),
            ));
        }
        *count += 1;
        Ok(UploadSlot {
            in_flight: self.in_flight.clone(),
            client: client.to_owned(),
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_limit_is_refused_and_others_are_not() {
        let slots = UploadSlots::default();
        let taken: Vec<UploadSlot> = (0..MAX_UPLOADS_PER_CLIENT)
            .map(|_| slots.take("token \"ci\"").unwrap())
            .collect();
        let e = slots.take("token \"ci\"").err().unwrap();
        assert_eq!(e.code(), ErrorCode::TooManyRequests);
        assert!(e.to_string().contains("32 uploads in progress"), "{e}");
        let _other = slots.take("token \"other\"").unwrap();
        drop(taken);
        slots.take("token \"ci\"").unwrap();
        assert_eq!(
            slots.in_flight.lock().unwrap().len(),
            1,
            "released entries go away"
        );
    }
}
