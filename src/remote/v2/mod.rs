//! FirecREST v2 client: `V2Client` implements `RemoteFs` over `/filesystem/{system}/ops/…`,
//! `/filesystem/{system}/transfer/…` and `/compute/{system}/jobs/…`.

pub mod wire;
