"""AI-MIP output: CMOR rewriting, validation and upload. Imports no torch (runs in the CMOR environment)."""
