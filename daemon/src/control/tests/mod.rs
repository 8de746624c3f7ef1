mod parse;
mod socket;
