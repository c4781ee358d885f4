"""Socket types of the pack (custom ones prefixed CK_) and the category root."""

CK_MODEL = "CK_MODEL"
CATEGORY = "ConceptKit"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
CK_CONCEPT = "CK_CONCEPT"
