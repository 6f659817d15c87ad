"""ctnode: a durable DICOM node (SCP + SCU) for scanner-side workstations."""

__version__ = "0.1.0"
