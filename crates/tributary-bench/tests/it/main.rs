mod limits;
mod loss;
