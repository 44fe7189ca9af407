//! A small line diff (longest common subsequence after trimming the common prefix and
//! suffix) and unified-diff hunks, for the DDL of one object.

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// In both.
    Equal(&'a str),
    /// Only in the old text.
    Delete(&'a str),
    /// Only in the new text.
    Insert(&'a str),
}

/// Above this many cells (old lines × new lines, after trimming) the middle is shown as
/// a whole deletion followed by a whole insertion instead of searching for common lines.
const LCS_CELL_LIMIT: usize = 4_000_000;

/// The edit script turning `old` into `new`, deletions before insertions in each change.
pub fn diff_lines<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Op<'a>> {
    let prefix = old
        .iter()
        .zip(new.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let a = &old[prefix..old.len() - suffix];
    let b = &new[prefix..new.len() - suffix];

    let mut ops: Vec<Op<'a>> = old[..prefix].iter().map(|l| Op::Equal(l)).collect();
    let (n, m) = (a.len(), b.len());
    if n > 0 && m > 0 && (n + 1).saturating_mul(m + 1) <= LCS_CELL_LIMIT {
        // lcs[i * (m + 1) + j] = length of the LCS of a[i..] and b[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if a[i] == b[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n && j < m {
            if a[i] == b[j] {
                ops.push(Op::Equal(a[i]));
                i += 1;
                j += 1;
            } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
                ops.push(Op::Delete(a[i]));
                i += 1;
            } else {
                ops.push(Op::Insert(b[j]));
                j += 1;
            }
        }
        ops.extend(a[i..].iter().map(|l| Op::Delete(l)));
        ops.extend(b[j..].iter().map(|l| Op::Insert(l)));
    } else {
        ops.extend(a.iter().map(|l| Op::Delete(l)));
        ops.extend(b.iter().map(|l| Op::Insert(l)));
    }
    ops.extend(old[old.len() - suffix..].iter().map(|l| Op::Equal(l)));
    ops
}

/// A unified-diff hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk<'a> {
    /// First old line (1-based; the line before when `old_len` is 0).
    pub old_start: usize,
    /// Old lines covered.
    pub old_len: usize,
    /// First new line (1-based; the line before when `new_len` is 0).
    pub new_start: usize,
    /// New lines covered.
    pub new_len: usize,
    /// The lines, context included.
    pub ops: Vec<Op<'a>>,
}

impl Hunk<'_> {
    /// `@@ -a,b +c,d @@`.
    pub fn header(&self) -> String {
        format!(
            "@@ -{},{} +{},{} @@",
            self.old_start, self.old_len, self.new_start, self.new_len
        )
    }
}

/// Groups an edit script into hunks with `context` unchanged lines around each change.
pub fn hunks<'a>(ops: &[Op<'a>], context: usize) -> Vec<Hunk<'a>> {
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Equal(_)))
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    let mut k = 0;
    while k < changes.len() {
        let first = changes[k];
        let mut last = first;
        while k + 1 < changes.len() && changes[k + 1] - last <= 2 * context + 1 {
            k += 1;
            last = changes[k];
        }
        k += 1;
        let start = first.saturating_sub(context);
        let end = (last + context + 1).min(ops.len());
        // Line numbers at `start`.
        let (mut old_line, mut new_line) = (0, 0);
        for op in &ops[..start] {
            match op {
                Op::Equal(_) => {
                    old_line += 1;
                    new_line += 1;
                }
                Op::Delete(_) => old_line += 1,
                Op::Insert(_) => new_line += 1,
            }
        }
        let slice = &ops[start..end];
        let old_len = slice.iter().filter(|o| !matches!(o, Op::Insert(_))).count();
        let new_len = slice.iter().filter(|o| !matches!(o, Op::Delete(_))).count();
        out.push(Hunk {
            old_start: if old_len == 0 { old_line } else { old_line + 1 },
            old_len,
            new_start: if new_len == 0 { new_line } else { new_line + 1 },
            new_len,
            ops: slice.to_vec(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    fn render(ops: &[Op]) -> String {
        ops.iter()
            .map(|o| match o {
                Op::Equal(l) => format!(" {l}\n"),
                Op::Delete(l) => format!("-{l}\n"),
                Op::Insert(l) => format!("+{l}\n"),
            })
            .collect()
    }

    #[test]
    fn identical_and_empty() {
        let a = lines("x\ny");
        assert!(diff_lines(&a, &a).iter().all(|o| matches!(o, Op::Equal(_))));
        assert!(diff_lines(&[], &[]).is_empty());
        assert_eq!(diff_lines(&[], &a), vec![Op::Insert("x"), Op::Insert("y")]);
        assert_eq!(diff_lines(&a, &[]), vec![Op::Delete("x"), Op::Delete("y")]);
    }

    #[test]
    fn minimal_edit() {
        let a = lines("a\nb\nc\nd\ne");
        let b = lines("a\nc\nX\nd\ne\nf");
        assert_eq!(render(&diff_lines(&a, &b)), " a\n-b\n c\n+X\n d\n e\n+f\n");
    }

    #[test]
    fn replacement_lists_deletions_first() {
        let a = lines("a\nold1\nold2\nz");
        let b = lines("a\nnew1\nnew2\nz");
        assert_eq!(
            render(&diff_lines(&a, &b)),
            " a\n-old1\n-old2\n+new1\n+new2\n z\n"
        );
    }

    #[test]
    fn hunks_split_and_merge() {
        let a: Vec<String> = (1..=30).map(|i| format!("l{i}")).collect();
        let mut b = a.clone();
        b[1] = "X".into(); // line 2
        b[27] = "Y".into(); // line 28
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let ops = diff_lines(&a, &b);
        let hs = hunks(&ops, 3);
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[0].header(), "@@ -1,5 +1,5 @@");
        assert_eq!(hs[1].header(), "@@ -25,6 +25,6 @@");
        // Close changes merge into one hunk.
        let hs = hunks(&ops, 13);
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].header(), "@@ -1,30 +1,30 @@");
    }

    #[test]
    fn hunk_of_pure_insertion() {
        let a = lines("a\nb");
        let b = lines("a\nb\nc");
        let hs = hunks(&diff_lines(&a, &b), 0);
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].header(), "@@ -2,0 +3,1 @@");
    }

    #[test]
    fn huge_middle_falls_back_to_replace() {
        let a: Vec<String> = (0..3000).map(|i| format!("a{i}")).collect();
        let b: Vec<String> = (0..3000).map(|i| format!("b{i}")).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let ops = diff_lines(&a, &b);
        assert_eq!(ops.len(), 6000);
        assert!(matches!(ops[0], Op::Delete("a0")));
        assert!(matches!(ops[3000], Op::Insert("b0")));
    }
}
