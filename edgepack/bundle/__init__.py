"""The bundle: manifest, golden vectors, signatures and archives; writing a bundle and verifying one."""
