//! Reads a JSON array as it arrives, one element at a time, so a listing of any length is never
//! held whole: only the element being read is buffered, and each one is deserialised (keeping
//! only the members its type declares) before the next one is read.
//!
//! Connect's listings (`GET /v1/vaults`, `GET /v1/vaults/{id}/items`) have no paging: a vault of
//! 45,000 items answers about 9.4 MB in one body. Two bounds keep memory safe without capping a
//! vault's size: one element may be at most `max_element_bytes` (a summary is a few hundred
//! bytes), and a listing at most `max_elements` elements (far above any real vault).

/// Bounds for one listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListLimits {
    pub max_elements: usize,
    pub max_element_bytes: usize,
}

/// Why a listing could not be read. Messages name positions and bounds, never content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the body is not a JSON array")]
    NotAnArray,
    #[error("element {index} is larger than {limit} bytes")]
    ElementTooLarge { index: usize, limit: usize },
    #[error("the listing has more than {limit} elements")]
    TooManyElements { limit: usize },
    #[error("element {index} is malformed: {reason}")]
    Malformed { index: usize, reason: String },
    #[error("the body ends before the array does")]
    Truncated,
    #[error("unexpected data after the array")]
    TrailingData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before `[`.
    Start,
    /// After `[` or `,`: an element (or, right after `[`, `]`) comes next.
    BeforeElement,
    /// Inside an element.
    InElement,
    /// After an element: `,` or `]` comes next.
    AfterElement,
    /// After `]`: only whitespace may follow.
    Done,
}

/// The parser. Feed it the body chunk by chunk with [`ArrayReader::feed`], then call
/// [`ArrayReader::finish`]; every complete element is handed to the callback as its raw bytes.
pub struct ArrayReader {
    limits: ListLimits,
    state: State,
    element: Vec<u8>,
    /// Nesting depth of `{`/`[` inside the current element.
    depth: usize,
    in_string: bool,
    escaped: bool,
    count: usize,
}

impl ArrayReader {
    pub fn new(limits: ListLimits) -> Self {
        ArrayReader {
            limits,
            state: State::Start,
            element: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            count: 0,
        }
    }

    /// Reads `chunk`, calling `element` with the raw bytes of each element completed in it.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        element: &mut impl FnMut(usize, &[u8]) -> Result<(), ListError>,
    ) -> Result<(), ListError> {
        for &byte in chunk {
            match self.state {
                State::Start => match byte {
                    b'[' => self.state = State::BeforeElement,
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => return Err(ListError::NotAnArray),
                },
                State::BeforeElement => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b']' if self.count == 0 => self.state = State::Done,
                    b']' | b',' => {
                        return Err(self.malformed("an element is missing"));
                    }
                    _ => {
                        self.state = State::InElement;
                        self.element_byte(byte, element)?;
                    }
                },
                State::InElement => self.element_byte(byte, element)?,
                State::AfterElement => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b',' => self.state = State::BeforeElement,
                    b']' => self.state = State::Done,
                    _ => return Err(self.malformed("expected , or ] after an element")),
                },
                State::Done => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => return Err(ListError::TrailingData),
                },
            }
        }
        Ok(())
    }

    /// Checks that the body ended where the array did; returns the number of elements.
    pub fn finish(self) -> Result<usize, ListError> {
        match self.state {
            State::Done => Ok(self.count),
            State::Start => Err(ListError::NotAnArray),
            _ => Err(ListError::Truncated),
        }
    }

    /// One byte inside an element: tracks strings and nesting to see where the element ends.
    fn element_byte(
        &mut self,
        byte: u8,
        element: &mut impl FnMut(usize, &[u8]) -> Result<(), ListError>,
    ) -> Result<(), ListError> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            return self.push(byte);
        }
        match byte {
            // A scalar element ends at the next `,` or `]`.
            b',' | b']' if self.depth == 0 => {
                self.complete(element)?;
                self.state = if byte == b',' {
                    State::BeforeElement
                } else {
                    State::Done
                };
                return Ok(());
            }
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self
                    .depth
                    .checked_sub(1)
                    .ok_or_else(|| self.malformed("unbalanced brackets"))?;
            }
            _ => {}
        }
        self.push(byte)?;
        if self.depth == 0 && matches!(byte, b'}' | b']') {
            self.complete(element)?;
            self.state = State::AfterElement;
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) -> Result<(), ListError> {
        if self.element.len() >= self.limits.max_element_bytes {
            return Err(ListError::ElementTooLarge {
                index: self.count,
                limit: self.limits.max_element_bytes,
            });
        }
        self.element.push(byte);
        Ok(())
    }

    fn complete(
        &mut self,
        element: &mut impl FnMut(usize, &[u8]) -> Result<(), ListError>,
    ) -> Result<(), ListError> {
        if self.count >= self.limits.max_elements {
            return Err(ListError::TooManyElements {
                limit: self.limits.max_elements,
            });
        }
        element(self.count, &self.element)?;
        self.count += 1;
        self.element.clear();
        // A large element's buffer is not kept for the rest of the listing.
        self.element.shrink_to(4 * 1024);
        Ok(())
    }

    fn malformed(&self, reason: &str) -> ListError {
        ListError::Malformed {
            index: self.count,
            reason: reason.into(),
        }
    }
}

/// Deserialises one element; serde's message names a position and a type, never the content.
pub fn parse_element<T: serde::de::DeserializeOwned>(
    index: usize,
    bytes: &[u8],
) -> Result<T, ListError> {
    serde_json::from_slice(bytes).map_err(|e| ListError::Malformed {
        index,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ListLimits = ListLimits {
        max_elements: 100,
        max_element_bytes: 64,
    };

    /// Parses `body` fed in chunks of `chunk` bytes into JSON values.
    fn read(
        body: &[u8],
        chunk: usize,
        limits: ListLimits,
    ) -> Result<Vec<serde_json::Value>, ListError> {
        let mut reader = ArrayReader::new(limits);
        let mut out = Vec::new();
        for part in body.chunks(chunk.max(1)) {
            reader.feed(part, &mut |i, bytes| {
                out.push(parse_element(i, bytes)?);
                Ok(())
            })?;
        }
        let count = reader.finish()?;
        assert_eq!(count, out.len());
        Ok(out)
    }

    #[test]
    fn elements_come_out_whole_whatever_the_chunk_boundaries() {
        let body = br#" [ {"id":"a","tags":["x","y]"],"t":"q\"}]"} , {"id":"b","n":{"m":[1,{}]}},7,"s,]",null,true ]
"#;
        let want: serde_json::Value = serde_json::from_slice(body).unwrap();
        for chunk in [1, 2, 3, 7, body.len()] {
            let got = read(body, chunk, LIMITS).unwrap();
            assert_eq!(serde_json::Value::Array(got), want, "chunk {chunk}");
        }
        assert!(read(b"[]", 1, LIMITS).unwrap().is_empty());
        assert!(read(b"\n[\n]\n", 1, LIMITS).unwrap().is_empty());
    }

    #[test]
    fn malformed_and_truncated_bodies_are_refused() {
        type Expected = fn(&ListError) -> bool;
        let cases: &[(&[u8], Expected)] = &[
            (b"", |e| *e == ListError::NotAnArray),
            (b"{\"id\":1}", |e| *e == ListError::NotAnArray),
            (b"[{\"id\":1}", |e| *e == ListError::Truncated),
            (b"[{\"id\":1},", |e| *e == ListError::Truncated),
            (b"[{\"id\":1},]", |e| {
                matches!(e, ListError::Malformed { .. })
            }),
            (b"[,{\"id\":1}]", |e| {
                matches!(e, ListError::Malformed { .. })
            }),
            (b"[{\"id\":1}}]", |e| {
                matches!(e, ListError::Malformed { .. })
            }),
            (b"[{\"id\":1} {\"id\":2}]", |e| {
                matches!(e, ListError::Malformed { .. })
            }),
            (b"[{\"id\" 1}]", |e| {
                matches!(e, ListError::Malformed { index: 0, .. })
            }),
            (b"[1] x", |e| *e == ListError::TrailingData),
        ];
        for (body, expected) in cases {
            for chunk in [1, body.len()] {
                let e = read(body, chunk, LIMITS).unwrap_err();
                assert!(expected(&e), "{:?}: {e:?}", String::from_utf8_lossy(body));
            }
        }
    }

    #[test]
    fn an_element_over_its_bound_is_refused_without_being_held() {
        let big = format!("[{{\"id\":\"{}\"}}]", "x".repeat(1000));
        let e = read(big.as_bytes(), 7, LIMITS).unwrap_err();
        assert_eq!(
            e,
            ListError::ElementTooLarge {
                index: 0,
                limit: 64
            }
        );
        // A string that never ends is bounded the same way.
        let endless = format!("[\"{}", "y".repeat(10_000));
        let e = read(endless.as_bytes(), 100, LIMITS).unwrap_err();
        assert!(matches!(e, ListError::ElementTooLarge { .. }), "{e:?}");
    }

    #[test]
    fn a_listing_over_the_element_count_bound_is_refused() {
        let limits = ListLimits {
            max_elements: 3,
            max_element_bytes: 64,
        };
        assert_eq!(read(b"[1,2,3]", 2, limits).unwrap().len(), 3);
        assert_eq!(
            read(b"[1,2,3,4]", 2, limits).unwrap_err(),
            ListError::TooManyElements { limit: 3 }
        );
    }

    #[test]
    fn errors_never_carry_element_content() {
        let body = br#"[{"id":"a","title":"hunter2-title" "x":1}]"#;
        let e = read(body, 5, LIMITS).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
