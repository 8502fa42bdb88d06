"""HL7 FHIR R4 faces of the service: FHIR resources in (CDS Hooks prefetch), FHIR resources out.

- `codes`: the documented code and unit tables (LOINC from the data contract, UCUM, SNOMED CT,
  ICD-10, RxNorm, CAR T products).
- `mapping`: FHIR resources -> one contract feature record, with unit conversion and the
  baseline window; reports what is missing instead of guessing. Its parts: `prefetch` (the keys,
  the queries announced, reading a prefetch value), `datatypes` (ids, dates, concepts, references),
  `medications` (CAR T product, dose, lymphodepletion), `conditions` (the yes/no features) and
  `mapped` (what a mapping gives back).
- `resources`: the answer -> a FHIR RiskAssessment; `card`: the answer -> the CDS Hooks card.
- `fetch`: optional retrieval of missing prefetch data from an allow-listed FHIR server.

The prediction itself is never here: both faces call the app's predictor with a record that has
passed the same `PatientFeatures` model as `POST /v1/risk`.
"""
