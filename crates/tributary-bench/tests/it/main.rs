mod limits;
mod loss;
mod nats_sync;
