"""Router factories: each takes the `Keyturn` facade and returns an `APIRouter`."""
