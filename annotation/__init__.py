"""Human evaluation without the UI: anonymize and reverse transcripts, assign tasks, store annotations,
measure agreement, import and export. No model code here."""
