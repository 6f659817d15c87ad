"""Pure DICOM helpers: no I/O, no sockets, no database."""
