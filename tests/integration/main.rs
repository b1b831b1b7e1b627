mod store_caps;
mod store_crash;
mod store_full_disk;
