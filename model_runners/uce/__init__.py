"""UCE (Rosen et al. 2023): chromosome-ordered protein-embedding gene sentences, one space for eight species."""
