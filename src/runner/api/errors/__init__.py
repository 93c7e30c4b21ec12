"""The one error table (`table`) and its rendering in each dialect's shape (`renderers`)."""
